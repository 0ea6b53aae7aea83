// apikeys::MemoryLimiter: admission control within one process. Rate limits are GCRA
// states in a fixed table of shards, each with its own lock; credits are charged in the
// Store with one guarded write per request, or from a lease of credits taken from the
// Store in advance.
// Thread-safety: admit() and the other methods are safe from many threads at once; no
// lock is shared by all keys.
// Ownership: shares ownership of the store that holds credits.
#ifndef APIKEYS_MEMORY_LIMITER_HPP
#define APIKEYS_MEMORY_LIMITER_HPP

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <memory>

#include "apikeys/export.hpp"
#include "apikeys/limiter.hpp"
#include "apikeys/store.hpp"

namespace apikeys {

/// Options for MemoryLimiter. Every field states its default.
struct MemoryLimiterOptions {
  /// Rate-limit states held for certain: one per (lineage, limit name) in use. Beyond
  /// it, a state that has been at rest for a second (its limit back to full burst) is
  /// dropped when its place is needed, which loses nothing; when no place is, admit()
  /// throws Error(busy) and the Validator applies its LimiterFailurePolicy rather than
  /// forget a state and over-admit. The tables grow as lineages come, up to four slots
  /// of MemoryLimiter::kBytesPerState bytes per state of capacity, each of the 64
  /// shards' tables rounded up to a power of two and at least 32 slots (so up to eight
  /// slots per state for a capacity that is not a power of two; 48 MiB at the default);
  /// doc/rate-limits.md gives the bytes per state measured. Default 262,144.
  std::size_t capacity = 262'144;
  /// Credits taken from the store at a time per lineage, then spent in this process
  /// without a store write. 0 (the default): every admission charges the store with one
  /// guarded write, exact across processes. With a lease, processes together still
  /// never admit more than the balance; a process that dies without returning its
  /// leases (SIGKILL, power loss) loses what they held: up to lease_size credits per
  /// lineage, and up to a request's cost plus lease_size for each request that was
  /// renewing a lineage's lease at that moment (doc/rate-limits.md, "A crash loses the
  /// lease"). An orderly destruction returns them.
  std::uint64_t lease_size = 0;
  /// Most lineages holding a lease at once (each of the 64 shards' tables rounded up to
  /// a power of two, at least 8: 512 in all at the least); beyond it, admissions charge
  /// the store directly. Default 65,536.
  std::size_t lease_capacity = 65'536;
  /// How long a lease is spent before what is left of it is returned and a new one
  /// taken. It bounds how long the store's balance lags behind this process, and how
  /// long another process's set_credits() can be overrun by this process's lease:
  /// credits are spent at most lease_ttl after the lease they were first taken into.
  /// Longer than a TimePoint reaches means the lease never expires. Default 60 s.
  std::chrono::milliseconds lease_ttl{std::chrono::seconds(60)};
};

/// In-process admission control; see the top of this header. Exact within one
/// process: admit() is all or nothing under the lock of the lineage's shard. Credits
/// are exact across processes sharing the store (each charge is one guarded write, or
/// a lease taken by one); rate limits are per process.
class APIKEYS_EXPORT MemoryLimiter final : public Limiter {
 public:
  /// Bytes each rate-limit state takes in the table.
  static constexpr std::size_t kBytesPerState = 48;

  /// `credits_store` charges credits (Store::take_credits); it may be null when no key
  /// has credits (a key that has them is then a limiter failure).
  explicit MemoryLimiter(std::shared_ptr<Store> credits_store, MemoryLimiterOptions options = {});
  /// Returns what is left of every lease to the store (return_leases()).
  ~MemoryLimiter() override;
  MemoryLimiter(const MemoryLimiter&) = delete;
  MemoryLimiter& operator=(const MemoryLimiter&) = delete;

  /// See Limiter::admit(). Throws Error(busy) when the table is full, and whatever the
  /// store throws.
  [[nodiscard]] Admission admit(const AdmissionRequest& request) override;
  /// See Limiter::admit_into(): admit() without allocating, once out.limits has room
  /// for the request's limits.
  void admit_into(const AdmissionRequest& request, Admission& out) override;
  /// See Limiter::prefetch(): starts loading the lineage's lease and the state of its
  /// first limit, without the shard's lock.
  void prefetch(const Uuid& lineage_id, const RateLimit* limits,
                std::size_t limit_count) const noexcept override;
  /// Drops the lineage's lease without returning it.
  void credits_reset(const Uuid& lineage_id) noexcept override;

  /// Returns what is left of every lease to the store now
  /// (Store::return_credits_checked(): nothing lands on a balance set since the lease
  /// was taken); a lease whose refill period has passed is dropped instead, as its
  /// credits expired. Over a store that checks no generation, the leases of a shard
  /// are dropped too once a credits_reset() of one of its lineages runs meanwhile (they
  /// may be a replaced balance's). Store errors are swallowed: those credits are lost,
  /// never granted twice.
  void return_leases() noexcept;

  /// Rate-limit states held now.
  [[nodiscard]] std::size_t states() const noexcept;
  /// Bytes of the rate-limit and lease tables now. The rate-limit tables follow the
  /// states in use: rebuilt at four slots per state kept (live, or at rest for less than
  /// a second) when they fill, so they also shrink once states come to rest.
  [[nodiscard]] std::size_t table_bytes() const noexcept;
  /// Credits held in leases now, over every lineage.
  [[nodiscard]] std::uint64_t leased() const noexcept;

  /// The options this limiter was built with.
  [[nodiscard]] const MemoryLimiterOptions& options() const noexcept;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace apikeys

#endif  // APIKEYS_MEMORY_LIMITER_HPP
