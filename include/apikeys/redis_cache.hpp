// apikeys::RedisCache keeps verdicts in Redis, shared by every process that points at
// the same server and prefix, optionally behind a small in-process tier kept coherent
// across processes by Redis pub/sub. Built only with -DAPIKEYS_WITH_REDIS=ON (hiredis);
// not in apikeys.hpp. Thread-safety: every method is safe from many threads (a pool of
// connections, plus one subscriber thread per instance); observers are called from the
// calling threads and from the subscriber thread (see RedisCacheOptions::observers).
// Ownership: owns its connections and its thread, shares its observers; hiredis types
// never appear in this header.
#ifndef APIKEYS_REDIS_CACHE_HPP
#define APIKEYS_REDIS_CACHE_HPP

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "apikeys/cache.hpp"
#include "apikeys/export.hpp"
#include "apikeys/observer.hpp"

namespace apikeys {

/// Options for RedisCache. Every field states its default.
struct RedisCacheOptions {
  /// Server address (standalone Redis or the current primary; not Redis Cluster).
  /// Defaults "127.0.0.1" and 6379.
  std::string host = "127.0.0.1";
  int port = 6379;
  /// AUTH password; empty: no AUTH. A refused AUTH counts as Redis unreachable (the
  /// breaker trips, see retry_interval). No message quotes it. RedisCache keeps one
  /// copy, wiped when the cache dies, and wipes the AUTH commands it builds from it
  /// (hiredis never holds it); the caller wipes its own. Default empty.
  std::string password;
  /// SELECT this database number. Default 0.
  int database = 0;
  /// Every key and the pub/sub channel start with this, so several deployments (or
  /// tests) can share one server. Deployments over different stores need different
  /// prefixes: under one prefix, a verdict read from one store answers for the other
  /// (see Cache). Default "apikeys:".
  std::string prefix = "apikeys:";
  /// Most connections open at once for commands (the subscriber has its own); a call
  /// that finds all busy waits up to command_timeout. Default 8.
  std::size_t pool_size = 8;
  /// Bound on opening a connection. Default 250 ms.
  std::chrono::milliseconds connect_timeout{250};
  /// Bound on one command's send and reply. Default 250 ms.
  std::chrono::milliseconds command_timeout{250};
  /// After a connection failure, get/fill_token/put fail at once (the Validator then
  /// reads the store) for this long before trying Redis again, so an outage costs one
  /// timeout per interval, not one per request. erase/clear always try. Default 1 s.
  std::chrono::milliseconds retry_interval{1000};
  /// How long the per-public-key fill generation written by erase() lives (put() keeps
  /// it at least this long, and at least as long as the verdict it writes). It must
  /// outlast any fill in flight (a store read). Default 24 h.
  std::chrono::milliseconds generation_ttl{std::chrono::hours(24)};
  /// Most verdicts held for one public key; beyond it only `valid` verdicts are added,
  /// so guessing secrets for a known public key cannot grow Redis without bound.
  /// Default 32.
  std::size_t max_verdicts_per_key = 32;
  /// Keep an in-process tier in front of Redis: hits on it do no I/O. It is used only
  /// while this instance's pub/sub subscription is up (so it hears every other
  /// process's erase/clear), and is emptied whenever the subscription is (re)made.
  /// Default true.
  bool local_tier = true;
  /// Most public keys in the local tier. Default 100,000.
  std::size_t local_capacity = 100'000;
  /// Longest a verdict stays in the local tier (never longer than in Redis): bounds
  /// staleness if an invalidation is lost while the subscription looks healthy.
  /// Default 10 s.
  std::chrono::milliseconds local_ttl{std::chrono::seconds(10)};
  /// How often the subscriber pings an idle subscription; two silent intervals mark it
  /// down (local tier off) and it reconnects. Default 1 s.
  std::chrono::milliseconds heartbeat_interval{1000};
  /// Told, through Observer::on_error() with Component::redis, of every failure handled
  /// without throwing to a caller, and of its end: the breaker opening ("breaker_open",
  /// with the reason) and closing ("breaker_close", recovered), the subscription lost
  /// ("subscription_lost") and restored ("subscription_restored", recovered), a pooled
  /// connection the server closed and that was retried on a fresh one ("reconnect"), a
  /// stored verdict that does not decode ("decode"); RedisLimiter adds its own (see
  /// redis_limiter.hpp). The list, the operations and when each fires:
  /// doc/redis-cache.md, "Observer events". No message holds the password.
  /// Threads: breaker, reconnect and decode events come on the thread of the call that
  /// met them (get, fill_token, put, erase, clear; admit, credits_reset); subscription
  /// events on the instance's subscriber thread, possibly while another thread is in a
  /// call. Exceptions an observer throws are caught and never change what a call
  /// returns. Nothing is built for them when the list is empty. A null entry is
  /// Error(invalid_argument) at construction. Default none.
  std::vector<std::shared_ptr<Observer>> observers;
};

/// Verdicts are keyed by the public key and the hex of the full presented digest (not
/// secret: an HMAC under the pepper). put() checks the fill token and writes in one Lua
/// script; erase() makes every verdict for the key unreachable in one script (even one
/// whose index entry was evicted) and publishes the erase to every instance's
/// in-process tier; clear() does the same for every key. Key layout, scripts, the
/// versioned verdict encoding (a value it cannot decode is a miss) and the breaker:
/// doc/redis-cache.md.
///
/// `not_found` verdicts are never written to Redis (any well-formed public key yields
/// one, so an attacker could grow Redis without bound): they are kept only in the
/// bounded in-process tier, while it is live, and otherwise not cached at all.
///
/// Failures: Redis unreachable or slow is Error(busy) (a Redis error reply is
/// Error(storage)); the Validator then treats the cache as a miss. erase() throws when
/// Redis is unreachable, so a revoke reports that the shared cache may still hold the
/// key (the store change itself has committed; retrying the revoke is safe).
///
/// Eviction never makes an erased verdict answer again (see above). Prefer a
/// maxmemory-policy of noeviction or volatile-ttl (verdicts go before the longer-lived
/// generation keys): under any policy that can evict a generation key within the few
/// milliseconds between an erase and a fill already in flight, that one fill can land.
class APIKEYS_EXPORT RedisCache final : public Cache {
 public:
  /// Starts the subscriber thread; connects lazily (a server that is down now is not
  /// an error). Throws Error(invalid_argument) for an empty host, a port outside
  /// 1..65535, a zero pool_size, a prefix longer than 256 bytes or a null observer.
  explicit RedisCache(RedisCacheOptions options = {});
  /// Stops the subscriber thread and closes every connection.
  ~RedisCache() override;

  [[nodiscard]] std::optional<Verdict> get(std::string_view public_key,
                                           const Digest& presented) override;
  [[nodiscard]] std::uint64_t fill_token(std::string_view public_key) override;
  void put(std::string_view public_key, const Digest& presented, const Verdict& verdict,
           std::chrono::milliseconds ttl, std::uint64_t token) override;
  void erase(std::string_view public_key) override;
  void clear() override;

  /// True while the local tier is in use (enabled, and the subscription is up).
  [[nodiscard]] bool local_tier_live() const noexcept;
  /// Invalidation messages (from any process, this one included) applied so far.
  [[nodiscard]] std::uint64_t invalidations_received() const noexcept;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace apikeys

#endif  // APIKEYS_REDIS_CACHE_HPP
