// apikeys::RedisLimiter: admission control shared by every node that uses one Redis.
// Each admission is one Lua script run by Redis, on Redis's own clock (TIME): every
// rate limit checked with GCRA and the credits charged, all or nothing, in one round
// trip. Credits are moved from the Store into Redis in batches, so the Store's durable
// balance always bounds what Redis may admit.
// Thread-safety: admit() is safe from many threads at once (a pool of connections);
// observers are called from the thread calling admit() or credits_reset().
// Ownership: shares ownership of the store that holds credits and of its observers;
// owns its connections.
#ifndef APIKEYS_REDIS_LIMITER_HPP
#define APIKEYS_REDIS_LIMITER_HPP

#include <cstdint>
#include <memory>

#include "apikeys/export.hpp"
#include "apikeys/limiter.hpp"
#include "apikeys/redis_cache.hpp"
#include "apikeys/store.hpp"

namespace apikeys {

/// Options for RedisLimiter. Every field states its default.
struct RedisLimiterOptions {
  /// Where Redis is and how to talk to it: host, port, password, database, prefix,
  /// pool_size, connect_timeout, command_timeout, retry_interval and observers are used
  /// (the cache fields are ignored). The limiter's keys are `<prefix>lim:{<lineage>}`.
  /// Defaults: RedisCacheOptions's.
  ///
  /// `connection.observers` hear, on the thread calling admit() or credits_reset(),
  /// the breaker opening and closing and a pooled connection retried (as for
  /// RedisCache), plus "credits_reset" (a reset that could not reach Redis),
  /// "deposit" (credits taken from the store and then not deposited in Redis: they may
  /// be lost; admit() still throws) and "return_credits" (credits that could not be
  /// given back to the store). doc/redis-limiter.md, "Observer events".
  RedisCacheOptions connection;
  /// Credits moved from the store into Redis at a time, per lineage, when Redis holds
  /// fewer than a request's cost. The store's balance is what is left outside Redis:
  /// it runs ahead of what was spent by at most this many credits per lineage, and a
  /// Redis restart or flush loses at most this many (never grants them twice).
  /// 1 to KeyPolicyLimits::kMaxCredits. Default 100.
  std::uint64_t credit_batch = 100;
};

/// Admission control in Redis; see the top of this header. Exact across every node
/// sharing one Redis: rate limits by one script per request on Redis's clock, credits
/// by spending in Redis only what was first taken from the store.
class APIKEYS_EXPORT RedisLimiter final : public Limiter {
 public:
  /// Connects lazily; never throws for an unreachable server (admit() does). Throws
  /// Error(invalid_argument) for bad options (a null observer among them).
  explicit RedisLimiter(std::shared_ptr<Store> credits_store, RedisLimiterOptions options = {});
  ~RedisLimiter() override;
  RedisLimiter(const RedisLimiter&) = delete;
  RedisLimiter& operator=(const RedisLimiter&) = delete;

  /// See Limiter::admit(). Throws Error(busy) when Redis is unreachable or slow, and
  /// whatever the store throws when credits are moved.
  [[nodiscard]] Admission admit(const AdmissionRequest& request) override;
  /// Deletes the credits Redis holds for the lineage (every node's), so the balance
  /// just set is what is spent next.
  void credits_reset(const Uuid& lineage_id) noexcept override;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace apikeys

#endif  // APIKEYS_REDIS_LIMITER_HPP
