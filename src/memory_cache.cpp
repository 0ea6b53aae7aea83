#include "apikeys/memory_cache.hpp"

#include <openssl/rand.h>

#include <algorithm>
#include <cstring>
#include <limits>
#include <optional>
#include <atomic>
#include <mutex>
#include <string>
#include <unordered_map>
#include <vector>

#include "apikeys/error.hpp"
#include "siphash.hpp"

namespace apikeys {

namespace detail {
SipHasher::SipHasher() {
  std::uint64_t k[2];
  if (RAND_bytes(reinterpret_cast<unsigned char*>(k), sizeof k) != 1) {
    throw Error(ErrorCode::crypto, "the CSPRNG failed to seed a hash table");
  }
  k0_ = k[0];
  k1_ = k[1];
}
}  // namespace detail

namespace {

constexpr std::size_t kStripesPerShard = 64;

// The public key, inline (no heap block per entry, no allocation per lookup), with its
// SipHash computed once per call and reused by the table.
struct InlineKey {
  static constexpr std::size_t kMax = MemoryCache::kMaxPublicKeyLength;
  std::uint64_t hash = 0;
  std::uint8_t len = 0;
  char data[kMax] = {};

  InlineKey(std::string_view pk, std::uint64_t h) noexcept : hash(h), len(static_cast<std::uint8_t>(pk.size())) {
    std::memcpy(data, pk.data(), pk.size());
  }
  friend bool operator==(const InlineKey& a, const InlineKey& b) noexcept {
    return a.hash == b.hash && a.len == b.len && std::memcmp(a.data, b.data, a.len) == 0;
  }
};

struct InlineKeyHash {
  std::size_t operator()(const InlineKey& k) const noexcept { return static_cast<std::size_t>(k.hash); }
};

// One verdict per public key. `presented` is the full digest of the secret that earned
// the verdict: a lookup answers only when the presented digest matches all 32 bytes.
struct Slot {
  std::int64_t expires_ms = 0;  // first: no padding before it (80 bytes in all)
  Digest presented;
  Verdict verdict;
};

struct alignas(64) Shard {
  mutable std::mutex mu;
  std::unordered_map<InlineKey, Slot, InlineKeyHash> map;
  // Fill generations: erase() bumps the stripe of a public key under `mu`, put()
  // compares under `mu`, so a fill that read the store before an erase never lands.
  std::atomic<std::uint64_t> stripes[kStripesPerShard] = {};
  std::size_t evict_cursor = 0;
};

// now + ttl without overflow: a TTL of milliseconds::max() means "until evicted".
std::int64_t expiry(std::int64_t now, std::chrono::milliseconds ttl) noexcept {
  const std::int64_t t = ttl.count();
  return t > std::numeric_limits<std::int64_t>::max() - now ? std::numeric_limits<std::int64_t>::max()
                                                            : now + t;
}

std::size_t round_up_pow2(std::size_t n) {
  std::size_t p = 1;
  while (p < n && p < (std::size_t{1} << 16)) p <<= 1;
  return p;
}

}  // namespace

struct MemoryCache::Impl {
  detail::SipHasher sip;
  std::shared_ptr<Clock> clock;
  std::size_t per_shard_capacity = 1;
  std::atomic<std::uint64_t> epoch{0};
  std::vector<std::unique_ptr<Shard>> shards;

  struct Where {
    Shard& shard;
    std::size_t stripe;
    std::uint64_t hash;
  };
  [[nodiscard]] Where locate(std::string_view pk) const noexcept {
    const std::uint64_t h = sip(pk);
    // Top bits pick the shard and stripe; the table uses the low bits for its buckets.
    Shard& s = *shards[(h >> 48) & (shards.size() - 1)];
    return {s, static_cast<std::size_t>((h >> 40) % kStripesPerShard), h};
  }
  [[nodiscard]] std::uint64_t token(const Where& w) const noexcept {
    // Both counters only grow, so the sum changes whenever either does.
    return w.shard.stripes[w.stripe].load(std::memory_order_acquire) +
           epoch.load(std::memory_order_acquire);
  }
  [[nodiscard]] std::int64_t now_ms() const noexcept { return to_unix_millis(clock->now()); }

  // REQUIRES: s.mu held and s.map.size() >= per_shard_capacity. Samples a few buckets
  // from a rotating cursor; evicts an expired entry if one turns up, else the first seen.
  void evict_one(Shard& s, std::int64_t now) {
    const std::size_t buckets = s.map.bucket_count();
    std::optional<InlineKey> victim;
    for (std::size_t probes = 0, seen = 0; probes < buckets && seen < 4; ++probes) {
      const std::size_t b = s.evict_cursor++ % buckets;
      for (auto it = s.map.begin(b); it != s.map.end(b); ++it) {
        ++seen;
        if (it->second.expires_ms <= now) {
          s.map.erase(it->first);
          return;
        }
        if (!victim) victim = it->first;
      }
    }
    if (victim) s.map.erase(*victim);
  }
};

MemoryCache::MemoryCache(MemoryCacheOptions options) : impl_(std::make_unique<Impl>()) {
  impl_->clock = options.clock ? std::move(options.clock) : system_clock();
  const std::size_t capacity = std::max<std::size_t>(options.capacity, 1);
  const std::size_t n = std::min(round_up_pow2(std::max<std::size_t>(options.shards, 1)),
                                 round_up_pow2(capacity));
  impl_->per_shard_capacity = std::max<std::size_t>(1, (capacity + n - 1) / n);
  impl_->shards.reserve(n);
  for (std::size_t i = 0; i < n; ++i) impl_->shards.push_back(std::make_unique<Shard>());
}

MemoryCache::~MemoryCache() = default;

std::optional<Verdict> MemoryCache::get(std::string_view public_key, const Digest& presented) {
  if (public_key.size() > kMaxPublicKeyLength) return std::nullopt;
  auto w = impl_->locate(public_key);
  const std::int64_t now = impl_->now_ms();
  std::lock_guard<std::mutex> lock(w.shard.mu);
  const auto it = w.shard.map.find(InlineKey(public_key, w.hash));
  static_assert(sizeof(InlineKey) == 64 && sizeof(Slot) == 80, "entry layout grew");
  if (it == w.shard.map.end()) return std::nullopt;
  if (it->second.expires_ms <= now) {
    w.shard.map.erase(it);
    return std::nullopt;
  }
  if (!constant_time_equal(it->second.presented, presented)) return std::nullopt;
  return it->second.verdict;
}

std::uint64_t MemoryCache::fill_token(std::string_view public_key) {
  return impl_->token(impl_->locate(public_key));
}

void MemoryCache::put(std::string_view public_key, const Digest& presented, const Verdict& verdict,
                      std::chrono::milliseconds ttl, std::uint64_t token) {
  if (ttl.count() <= 0 || public_key.size() > kMaxPublicKeyLength) return;
  auto w = impl_->locate(public_key);
  const std::int64_t now = impl_->now_ms();
  std::lock_guard<std::mutex> lock(w.shard.mu);
  if (impl_->token(w) != token) return;  // erased or cleared since the fill began
  const InlineKey key(public_key, w.hash);
  auto it = w.shard.map.find(key);
  if (it != w.shard.map.end()) {
    const Slot& old = it->second;
    const bool old_valid_live = old.verdict.code == ValidationCode::valid && old.expires_ms > now;
    if (old_valid_live && verdict.code != ValidationCode::valid &&
        !constant_time_equal(old.presented, presented)) {
      return;  // a guess at the secret never pushes the owner's verdict out
    }
    it->second = Slot{expiry(now, ttl), presented, verdict};
    return;
  }
  if (w.shard.map.size() >= impl_->per_shard_capacity) impl_->evict_one(w.shard, now);
  w.shard.map.emplace(key, Slot{expiry(now, ttl), presented, verdict});
}

void MemoryCache::erase(std::string_view public_key) {
  auto w = impl_->locate(public_key);
  std::lock_guard<std::mutex> lock(w.shard.mu);
  w.shard.stripes[w.stripe].fetch_add(1, std::memory_order_acq_rel);
  if (public_key.size() <= kMaxPublicKeyLength) w.shard.map.erase(InlineKey(public_key, w.hash));
}

void MemoryCache::clear() {
  // Bump first: a put that has not yet taken its shard lock will now be refused; one
  // that already did is removed below when this reaches its shard.
  impl_->epoch.fetch_add(1, std::memory_order_acq_rel);
  for (auto& s : impl_->shards) {
    std::lock_guard<std::mutex> lock(s->mu);
    s->map.clear();
  }
}

std::size_t MemoryCache::size() const {
  std::size_t n = 0;
  for (const auto& s : impl_->shards) {
    std::lock_guard<std::mutex> lock(s->mu);
    n += s->map.size();
  }
  return n;
}

}  // namespace apikeys
