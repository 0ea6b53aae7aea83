// apikeys::MemoryCache is the bundled in-process verdict cache: sharded (no global
// lock on the hot path), bounded in entries, with TTLs read from an injectable clock.
// Thread-safety: every method is safe from many threads (one mutex per shard).
// Ownership: owns its entries; holds its clock through std::shared_ptr.
#ifndef APIKEYS_MEMORY_CACHE_HPP
#define APIKEYS_MEMORY_CACHE_HPP

#include <cstddef>
#include <limits>
#include <memory>

#include "apikeys/cache.hpp"
#include "apikeys/clock.hpp"
#include "apikeys/export.hpp"

namespace apikeys {

/// Options for MemoryCache. Every field states its default.
struct MemoryCacheOptions {
  /// The largest capacity: more entries than fit in memory (each takes over 128 bytes),
  /// so a capacity clamped to it is bounded by memory alone.
  static constexpr std::size_t kMaxCapacity = std::numeric_limits<std::size_t>::max() / 128;

  /// Most public keys held at once (split evenly over the shards, each shard's share
  /// rounded up); beyond it an entry of the full shard is evicted, an expired one when a
  /// small sample finds one, else an arbitrary one. 0 is taken as 1, and anything above
  /// kMaxCapacity (SIZE_MAX included) as kMaxCapacity. Default 1,000,000.
  std::size_t capacity = 1'000'000;
  /// Number of independently locked shards, rounded up to a power of two, at most
  /// 65,536 and at most the capacity rounded up to a power of two. Default 64.
  std::size_t shards = 64;
  /// Source of time for TTLs. Default (null): the system clock.
  std::shared_ptr<Clock> clock;
};

/// One verdict slot per public key: a later put() replaces it, except that a negative
/// verdict for another secret never displaces a `valid` one (so guessing secrets for a
/// known public key cannot push its owner off the cache).
class APIKEYS_EXPORT MemoryCache final : public Cache {
 public:
  /// Public keys longer than this are never cached (get misses, put does nothing):
  /// keys are held inline, so a lookup allocates nothing. Every format with a prefix
  /// of up to 23 characters and the default 32-character body fits.
  static constexpr std::size_t kMaxPublicKeyLength = 55;

  /// An empty cache. Defaults: see MemoryCacheOptions.
  explicit MemoryCache(MemoryCacheOptions options = {});
  ~MemoryCache() override;

  [[nodiscard]] std::optional<Verdict> get(std::string_view public_key,
                                           const Digest& presented) override;
  [[nodiscard]] std::uint64_t fill_token(std::string_view public_key) override;
  void put(std::string_view public_key, const Digest& presented, const Verdict& verdict,
           std::chrono::milliseconds ttl, std::uint64_t token) override;
  void erase(std::string_view public_key) override;
  void clear() override;

  /// Number of entries held (expired ones included until evicted).
  [[nodiscard]] std::size_t size() const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace apikeys

#endif  // APIKEYS_MEMORY_CACHE_HPP
