// apikeys::MemoryCache is the bundled in-process verdict cache: sharded (no global
// lock on the hot path), bounded in entries and in bytes, with TTLs read from an
// injectable clock.
// Thread-safety: every method is safe from many threads; a hit takes no lock (a lookup
// that meets an expired entry locks its shard to erase it), the writers one mutex per
// shard.
// Ownership: owns its entries; holds its clock through std::shared_ptr.
#ifndef APIKEYS_MEMORY_CACHE_HPP
#define APIKEYS_MEMORY_CACHE_HPP

#include <cstddef>
#include <limits>
#include <memory>

#include "apikeys/cache.hpp"
#include "apikeys/clock.hpp"
#include "apikeys/export.hpp"
#include "apikeys/key_generator.hpp"

namespace apikeys {

namespace detail {
class MemoryCacheProbe;  // the library's Validator (private)
}  // namespace detail

/// Options for MemoryCache. Every field states its default.
struct MemoryCacheOptions {
  /// The largest capacity: more entries than fit in memory (each takes over 100 bytes,
  /// so this many would fill most of a 64-bit address space), so a capacity clamped to
  /// it is bounded by memory alone.
  static constexpr std::size_t kMaxCapacity = std::numeric_limits<std::size_t>::max() / 128;

  /// Most public keys held at once (split evenly over the shards, each shard's share
  /// rounded up); beyond it an entry of the full shard is evicted, an expired one when a
  /// small sample finds one, else an arbitrary one. 0 is taken as 1, and anything above
  /// kMaxCapacity (SIZE_MAX included) as kMaxCapacity. Default 1,000,000.
  std::size_t capacity = 1'000'000;
  /// Most bytes the entries may count for (MemoryCache::kEntryBytes each, plus the
  /// block that holds a verdict's scopes and metadata when it has any), split evenly over
  /// the shards; beyond it entries of the full shard are evicted as for `capacity`. The
  /// entry being stored is always kept, so 0, or anything below one entry, holds one
  /// entry; an entry larger than its shard's share is held alone in its shard. Allocator
  /// headers and rounding are not counted. Default 256 MiB (about 2.6 million entries
  /// without scopes, metadata or an expiry, or 230,000 with 1 KiB of metadata each).
  std::size_t max_bytes = std::size_t{256} << 20;
  /// Number of independently locked shards, rounded up to a power of two, at most
  /// 65,536, at most the capacity rounded up to a power of two, and at most max_bytes /
  /// 16 KiB rounded down to a power of two (at least 1), so that a shard's share of
  /// max_bytes holds the largest verdict the Validator stores. Default 64.
  std::size_t shards = 64;
  /// Source of time for TTLs. get() reads Clock::coarse_now() and answers only while an
  /// entry's deadline is past the latest time that reading may trail
  /// (coarse_resolution()); put() sets the deadline from now(). So a coarse clock cuts
  /// a TTL by up to its resolution, rounded up to milliseconds (a TTL that short is not
  /// stored), and does not stretch one (see system_clock() for a kernel tick handled
  /// late). Each reading is checked against Clock::steady_now(): when the time of day
  /// has been set back, the cache's time carries on from where it was, so the step does
  /// not stretch a TTL; time that passed while the steady reading stood still (a machine
  /// asleep) counts (doc/memory-cache.md, "Time"). A clock without a steady reading of
  /// its own is taken as it reads. Default (null): the system clock.
  std::shared_ptr<Clock> clock;
};

/// One verdict slot per public key: a later put() replaces it, except that a put whose
/// entry could not answer (a TTL within the clock's coarse resolution) stores nothing,
/// and a `wrong_secret` or `not_found` verdict never displaces a live verdict reached
/// with the key's secret (`valid`, `expired`, `revoked` or `disabled`) for another
/// secret: guessing secrets for a known public key cannot push its owner off the cache,
/// nor tell, by whether a guess is cached, which state its owner's verdict holds. get() returns
/// the whole Verdict that put() stored: scopes in their order, metadata byte for byte,
/// has_policy, rate limits, has_credits, has_admission and the lineage.
///
/// Entries are found by a 128-bit SipHash of the public key under a random per-cache
/// key, not by the key's characters: two public keys share an entry only if their
/// hashes collide (a chance of 2^-128 per pair, under a key no caller sees), and even
/// then an entry answers only the secret it was stored with.
///
/// An entry keeps a 128-bit SipHash-2-4 of the presented digest, under a second random
/// per-cache key, and answers only a lookup whose digest has the same one: another
/// digest matches by a chance of 2^-128, under a key no caller sees. A Validator
/// calls its MemoryCache through a path of its own that presents the secret rather
/// than its digest (a third key, and a domain of the Validator's hasher): a hit then
/// computes no HMAC. Verdicts put by Validators are found only by Validators whose
/// HmacSha256Hasher objects hold the same peppers (a hasher of another type: by that
/// Validator alone), and those put() through this interface only through it
/// (doc/memory-cache.md, "Proofs").
///
/// Bytes per entry: kEntryBytes, plus 8 when the key expires, plus, for a verdict with
/// scopes, metadata or rate limits (or the lineage of a rotated key), a block allocated
/// with the entry's node: 20 + 4 x (number of scopes) + (characters of the scopes) +
/// (bytes of the metadata) + 28 x (number of rate limits) + (characters of their
/// names) + 16 when the lineage is kept. A lookup of a verdict without scopes, metadata
/// or rate limits allocates nothing; one with them allocates the strings it returns.
///
/// Thread-safety: every method may be called from many threads at once. A hit through
/// get() or get_into() takes no lock and writes nothing another thread reads (a
/// lookup that meets an expired entry locks its shard to erase it), so hits on
/// different cores never wait for each other; put(), erase() and clear() lock one
/// shard (clear() each in turn), size() and bytes() likewise. Once erase() or clear()
/// has returned, no get() that starts afterwards answers what they removed. A get()
/// on another thread may still be reading what a write takes out, so clear() waits
/// for the gets in progress and then frees everything it removed; an entry that put()
/// or erase() replaces or removes is freed by a later write to its shard or by clear(),
/// at most 64 per shard held back (doc/memory-cache.md, "Reads without a lock"). bytes() stops
/// counting an entry at once.
/// Ownership: owns its entries; holds its clock through std::shared_ptr. The cache must
/// outlive every call into it.
class APIKEYS_EXPORT MemoryCache final : public Cache {
 public:
  /// The bytes an entry counts for against MemoryCacheOptions::max_bytes besides its
  /// block: its node (88 bytes on 64-bit platforms: a 128-bit keyed hash of the public
  /// key and one of the secret, the verdict's fixed fields, a link) and two bucket
  /// pointers (the table keeps at most two buckets per entry).
  static constexpr std::size_t kEntryBytes = 104;

  /// Public keys longer than this are never cached (get misses, put does nothing), which
  /// bounds the hashing a lookup does. It is the longest key of any KeyFormat (a
  /// 32-character prefix, 128 random characters and the checksum), so every key a
  /// Validator accepts can be cached.
  static constexpr std::size_t kMaxPublicKeyLength = KeyFormat::kMaxKeySize;

  /// An empty cache. Defaults: see MemoryCacheOptions.
  explicit MemoryCache(MemoryCacheOptions options = {});
  ~MemoryCache() override;

  [[nodiscard]] std::optional<Verdict> get(std::string_view public_key,
                                           const Digest& presented) override;
  /// See Cache::get_into(): keeps the capacity of out's vectors and strings.
  bool get_into(std::string_view public_key, const Digest& presented, Verdict& out) override;
  /// See Cache::prefetch(): starts loading the public key's bucket, the first entry of
  /// its chain and the two lines after it (where a verdict's policy block lies). Does
  /// nothing on a thread that has not yet called get() or get_into(): never locks,
  /// allocates or throws.
  void prefetch(std::string_view public_key) const noexcept override;
  [[nodiscard]] std::uint64_t fill_token(std::string_view public_key) override;
  void put(std::string_view public_key, const Digest& presented, const Verdict& verdict,
           std::chrono::milliseconds ttl, std::uint64_t token) override;
  void erase(std::string_view public_key) override;
  void clear() override;

  /// Number of entries held (expired ones included until evicted).
  [[nodiscard]] std::size_t size() const;
  /// Bytes the entries held count for against MemoryCacheOptions::max_bytes (see
  /// kEntryBytes).
  [[nodiscard]] std::size_t bytes() const;

 private:
  friend class detail::MemoryCacheProbe;
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace apikeys

#endif  // APIKEYS_MEMORY_CACHE_HPP
