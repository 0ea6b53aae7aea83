#include "apikeys/memory_cache.hpp"

#include <algorithm>
#include <array>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <cstring>
#include <limits>
#include <memory>
#include <new>
#include <optional>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#include "apikeys/error.hpp"
#include "result_fields.hpp"
#include "siphash.hpp"
#include "thread_annotations.hpp"

namespace apikeys {

namespace {

constexpr std::size_t kStripesPerShard = 64;

// A public key's identity in the table: its 128-bit SipHash under the cache's random
// key. Two public keys share an entry only if their tags collide, a chance of 2^-128
// per pair under a key no caller sees (no tag leaves the cache), and even then an
// entry answers only the exact digest of the secret it was stored with. `lo` also
// picks the shard, the stripe and the bucket. Holding the tag rather than the key (up
// to 55 characters) keeps a node at 104 bytes, and a lookup compares two words.
using KeyId = detail::Sip128;

// A verdict's scopes, metadata, rate limits and lineage (when it is not the key's own
// id), packed into one block that sits right after its entry's Node (and the key's
// expiry, when it has one), in the same heap block: reading a verdict's policy is then
// no pointer chase to a second allocation (on a hit, that was one more dependent cache
// miss), and an entry costs one allocation. A key with none has no block. Layout,
// native byte order (the block never leaves the process), lengths as uint32:
//   block size | scope count | metadata length | limit count | lineage flag |
//   per scope: length, characters | metadata |
//   per limit: name length, name, limit (8), period ms (8), burst (8) | lineage (16, if flagged)
class Policy {
 public:
  static constexpr std::size_t kHeader = 20;
  static constexpr std::size_t kLimitFixed = 4 + 24;

  // True when v's lineage must be kept (a rotated key's is not its own id).
  static bool keeps_lineage(const Verdict& v) noexcept {
    return !v.lineage_id.is_nil() && v.lineage_id != v.key_id;
  }

  // Bytes of v's block; 0 when it has no scopes, metadata, limits or lineage to keep.
  // Throws Error(invalid_argument) when the block would pass 4 GiB.
  static std::size_t size_of(const Verdict& v) {
    const bool lineage = keeps_lineage(v);
    if (v.scopes.empty() && v.metadata.empty() && v.rate_limits.empty() && !lineage) return 0;
    std::size_t total = kHeader + v.metadata.size() + (lineage ? 16 : 0);
    for (const std::string& s : v.scopes) total += 4 + s.size();
    for (const RateLimit& l : v.rate_limits) total += kLimitFixed + l.name.size();
    if (total > std::numeric_limits<std::uint32_t>::max()) {
      throw Error(ErrorCode::invalid_argument,
                  "MemoryCache: a verdict's scopes and metadata take over 4 GiB");
    }
    return total;
  }

  // Writes v's block of size_of(v) = `total` (> 0) bytes at `out`.
  static void write(const Verdict& v, std::size_t total, unsigned char* out) noexcept {
    const bool lineage = keeps_lineage(v);
    store32(out, total);
    store32(out + 4, v.scopes.size());
    store32(out + 8, v.metadata.size());
    store32(out + 12, v.rate_limits.size());
    store32(out + 16, lineage ? 1 : 0);
    out += kHeader;
    for (const std::string& s : v.scopes) {
      store32(out, s.size());
      std::copy(s.begin(), s.end(), out + 4);
      out += 4 + s.size();
    }
    out = std::copy(v.metadata.begin(), v.metadata.end(), out);
    for (const RateLimit& l : v.rate_limits) {
      store32(out, l.name.size());
      out = std::copy(l.name.begin(), l.name.end(), out + 4);
      const std::int64_t period = l.period.count();
      std::memcpy(out, &l.limit, 8);
      std::memcpy(out + 8, &period, 8);
      std::memcpy(out + 16, &l.burst, 8);
      out += 24;
    }
    if (lineage) std::memcpy(out, v.lineage_id.bytes().data(), 16);
  }

  // Bytes of the block at `in` (0 when there is none: `in` is null).
  [[nodiscard]] static std::size_t bytes(const unsigned char* in) noexcept {
    return in != nullptr ? load32(in) : 0;
  }

  // Sets v's scopes, metadata, limits and lineage from the block at `in` (empty, and
  // the lineage nil, when `in` is null). The vectors keep their capacity.
  static void unpack(const unsigned char* in, Verdict& v) {
    v.scopes.clear();
    v.metadata.clear();
    v.rate_limits.clear();
    v.lineage_id = Uuid();
    if (in == nullptr) return;
    const std::uint32_t count = load32(in + 4);
    const std::uint32_t metadata = load32(in + 8);
    const std::uint32_t limits = load32(in + 12);
    const bool lineage = load32(in + 16) != 0;
    in += kHeader;
    v.scopes.reserve(count);
    for (std::uint32_t i = 0; i < count; ++i) {
      const std::uint32_t len = load32(in);
      v.scopes.emplace_back(reinterpret_cast<const char*>(in + 4), len);
      in += 4 + static_cast<std::size_t>(len);
    }
    if (metadata > 0) v.metadata.assign(reinterpret_cast<const char*>(in), metadata);
    in += metadata;
    // Each name constructed in place (std::string::assign() on a default-constructed
    // one took over 100 instructions more per limit on the hit path).
    v.rate_limits.reserve(limits);
    for (std::uint32_t i = 0; i < limits; ++i) {
      const std::uint32_t len = load32(in);
      v.rate_limits.push_back(RateLimit{std::string(reinterpret_cast<const char*>(in + 4), len)});
      RateLimit& l = v.rate_limits.back();
      in += 4 + static_cast<std::size_t>(len);
      std::int64_t period = 0;
      std::memcpy(&l.limit, in, 8);
      std::memcpy(&period, in + 8, 8);
      std::memcpy(&l.burst, in + 16, 8);
      l.period = std::chrono::milliseconds(period);
      in += 24;
    }
    if (lineage) {
      std::array<std::uint8_t, 16> id{};
      std::memcpy(id.data(), in, 16);
      v.lineage_id = Uuid(id);
    }
  }

 private:
  static void store32(unsigned char* at, std::size_t v) noexcept {
    const auto u = static_cast<std::uint32_t>(v);
    std::memcpy(at, &u, 4);
  }
  static std::uint32_t load32(const unsigned char* at) noexcept {
    std::uint32_t u = 0;
    std::memcpy(&u, at, 4);
    return u;
  }
};

// One verdict per public key, with the identity of its public key and the link of its
// bucket's chain: 104 bytes on 64-bit platforms, so that with the allocator's header it
// takes a 112-byte chunk. `presented` is the full digest of the secret that earned the
// verdict: a lookup answers only when the presented digest matches all 32 bytes and
// its pepper id. What only some verdicts have follows the node in the same allocation:
// the key's expiry (8 bytes, Unix milliseconds), then the Policy block (scopes,
// metadata, rate limits, a kept lineage). `expires_ms` is the entry's own deadline in
// Unix milliseconds, never after the key's expiry (see deadline()); the key's expiry is
// returned with the verdict, so the Validator checks it against its own clock whatever
// clock this cache has.
struct Node {
  enum Flag : std::uint8_t {
    kHasPolicy = 1,
    kHasAdmission = 2,
    kHasCredits = 4,
    kHasBlock = 8,    // a Policy block follows the node (after the expiry, if any)
    kHasExpiry = 16,  // the key's expiry follows the node
  };
  static constexpr std::size_t kExpiryBytes = 8;

  Node* next = nullptr;
  KeyId id;
  std::int64_t expires_ms = 0;
  Digest presented;
  ValidationCode code = ValidationCode::error;
  std::uint8_t flags = 0;
  Uuid account_id;
  Uuid key_id;

  // REQUIRES: the allocation holds the tail that `v` and `block` call for.
  Node(const KeyId& k, std::int64_t expires, const Digest& d, const Verdict& v, bool block) noexcept
      : id(k),
        expires_ms(expires),
        presented(d),
        code(v.code),
        flags(static_cast<std::uint8_t>((v.has_policy ? kHasPolicy : 0) |
                                        (v.has_admission ? kHasAdmission : 0) |
                                        (v.has_credits ? kHasCredits : 0) |
                                        (block ? kHasBlock : 0) | (v.expires_at ? kHasExpiry : 0))),
        account_id(v.account_id),
        key_id(v.key_id) {}

  // Bytes that follow the node: the expiry, then the Policy block.
  [[nodiscard]] const unsigned char* tail() const noexcept {
    return reinterpret_cast<const unsigned char*>(this) + sizeof(Node);
  }
  [[nodiscard]] std::size_t expiry_bytes() const noexcept {
    return (flags & kHasExpiry) != 0 ? kExpiryBytes : 0;
  }
  // The Policy block, or null for none.
  [[nodiscard]] const unsigned char* policy() const noexcept {
    return (flags & kHasBlock) != 0 ? tail() + expiry_bytes() : nullptr;
  }

  // Sets every field of `v` to the verdict, keeping the capacity of its vectors.
  // REQUIRES: the shard's mutex (the node may be freed by another put otherwise).
  void fill(Verdict& v) const {
    static_assert(sizeof(Verdict) == sizeof(detail::VerdictFields),
                  "Verdict has a new field: set it here");
    v.code = code;
    v.account_id = account_id;
    v.key_id = key_id;
    v.has_policy = (flags & kHasPolicy) != 0;
    v.has_admission = (flags & kHasAdmission) != 0;
    v.has_credits = (flags & kHasCredits) != 0;
    v.expires_at.reset();
    if ((flags & kHasExpiry) != 0) {
      std::int64_t ms = 0;
      std::memcpy(&ms, tail(), kExpiryBytes);
      v.expires_at = from_unix_millis(ms);
    }
    Policy::unpack(policy(), v);
    // The block keeps a lineage only when it is not the key's own id.
    if (v.lineage_id.is_nil() && v.has_admission && code == ValidationCode::valid)
      v.lineage_id = key_id;
  }
};

struct NodeDeleter {
  void operator()(Node* n) const noexcept {
    n->~Node();
    ::operator delete(static_cast<void*>(n));
  }
};
using NodePtr = std::unique_ptr<Node, NodeDeleter>;

// A node for `key` holding `verdict`, the key's expiry and its Policy block written
// right after it (one allocation). Throws std::bad_alloc, or Error(invalid_argument) for a block
// over 4 GiB.
NodePtr make_node(const KeyId& key, std::int64_t expires, const Digest& presented,
                  const Verdict& verdict) {
  const std::size_t block = Policy::size_of(verdict);
  const std::size_t expiry = verdict.expires_at ? Node::kExpiryBytes : 0;
  void* mem = ::operator new(sizeof(Node) + expiry + block);
  auto* tail = static_cast<unsigned char*>(mem) + sizeof(Node);
  if (verdict.expires_at) {
    const std::int64_t ms = to_unix_millis(*verdict.expires_at);
    std::memcpy(tail, &ms, Node::kExpiryBytes);
  }
  if (block > 0) Policy::write(verdict, block, tail + expiry);
  static_assert(std::is_nothrow_constructible_v<Node, const KeyId&, std::int64_t, const Digest&,
                                                const Verdict&, bool>,
                "a node is built after its memory is taken");
  return NodePtr(new (mem) Node(key, expires, presented, verdict, block > 0));
}

// A chained hash table with power-of-two buckets indexed by the key's SipHash (keyed,
// so uniform; no modulo by a prime) that point at their first node. std::unordered_map
// (libstdc++) points a bucket at the node *before* its first one, another node that is
// somewhere else in memory: on a cache hit that was one more dependent cache miss, and
// a division, per lookup. Load factor at most 1: 8 to 16 bytes of buckets per entry.
// It keeps the bytes its entries count for (MemoryCache::kEntryBytes each, plus their
// Policy blocks).
// REQUIRES: the owner serialises every call (the shard's mutex).
class Table {
 public:
  Table() = default;
  Table(const Table&) = delete;
  Table& operator=(const Table&) = delete;
  ~Table() { clear(); }

  [[nodiscard]] std::size_t size() const noexcept { return size_; }
  [[nodiscard]] std::size_t bytes() const noexcept { return bytes_; }
  [[nodiscard]] static std::size_t charge(const Node& n) noexcept {
    return MemoryCache::kEntryBytes + n.expiry_bytes() + Policy::bytes(n.policy());
  }
  [[nodiscard]] std::size_t bucket_count() const noexcept { return buckets_.size(); }
  [[nodiscard]] Node* bucket(std::size_t b) const noexcept { return buckets_[b]; }

  [[nodiscard]] Node* find(const KeyId& k) const noexcept {
    if (buckets_.empty()) return nullptr;
    for (Node* n = buckets_[index(k.lo)]; n != nullptr; n = n->next) {
      if (n->id == k) return n;
    }
    return nullptr;
  }

  // Links `fresh`. REQUIRES: no node has its key. May throw std::bad_alloc when the
  // buckets grow (the table is unchanged and `fresh` still the caller's).
  void insert(NodePtr& fresh) {
    if (size_ + 1 > buckets_.size()) grow();
    Node* n = fresh.release();
    Node*& head = buckets_[index(n->id.lo)];
    n->next = head;
    head = n;
    ++size_;
    bytes_ += charge(*n);
  }

  // Puts `fresh` in the place of `old`, a node of this table with the same key; returns
  // `old`, unlinked, for the caller to free (after its lock, ideally).
  NodePtr replace(Node* old, NodePtr& fresh) noexcept {
    for (Node** link = &buckets_[index(old->id.lo)]; *link != nullptr; link = &(*link)->next) {
      if (*link == old) {
        Node* n = fresh.release();
        n->next = old->next;
        *link = n;
        bytes_ -= charge(*old);
        bytes_ += charge(*n);
        old->next = nullptr;
        return NodePtr(old);
      }
    }
    return nullptr;  // not reached: `old` is in the table
  }

  bool erase(const KeyId& k) noexcept {
    if (buckets_.empty()) return false;
    for (Node** link = &buckets_[index(k.lo)]; *link != nullptr; link = &(*link)->next) {
      if ((*link)->id == k) {
        Node* dead = *link;
        *link = dead->next;
        bytes_ -= charge(*dead);
        NodeDeleter()(dead);
        --size_;
        return true;
      }
    }
    return false;
  }

  void clear() noexcept {
    for (Node*& head : buckets_) {
      while (head != nullptr) {
        Node* dead = head;
        head = dead->next;
        NodeDeleter()(dead);
      }
    }
    size_ = 0;
    bytes_ = 0;
  }

 private:
  [[nodiscard]] std::size_t index(std::uint64_t hash) const noexcept {
    return static_cast<std::size_t>(hash) & (buckets_.size() - 1);
  }

  void grow() {
    std::vector<Node*> next(buckets_.empty() ? 8 : buckets_.size() * 2, nullptr);
    const std::size_t mask = next.size() - 1;
    for (Node* head : buckets_) {
      while (head != nullptr) {
        Node* n = head;
        head = n->next;
        Node*& to = next[static_cast<std::size_t>(n->id.lo) & mask];
        n->next = to;
        to = n;
      }
    }
    buckets_.swap(next);
  }

  std::vector<Node*> buckets_;
  std::size_t size_ = 0;
  std::size_t bytes_ = 0;
};

struct alignas(64) Shard {
  detail::Mutex mu;
  Table table APIKEYS_GUARDED_BY(mu);
  // Fill generations: erase() bumps the stripe of a public key under `mu`, put()
  // compares under `mu`, so a fill that read the store before an erase never lands.
  // Atomic: fill_token() reads them without the lock.
  std::atomic<std::uint64_t> stripes[kStripesPerShard] = {};
  std::size_t evict_cursor APIKEYS_GUARDED_BY(mu) = 0;
};

// now + ttl (ttl > 0) without overflow: a TTL of milliseconds::max() means "until
// evicted". A time before 1970 cannot overflow (and max - now would).
std::int64_t expiry(std::int64_t now, std::chrono::milliseconds ttl) noexcept {
  const std::int64_t t = ttl.count();
  return now > 0 && t > std::numeric_limits<std::int64_t>::max() - now
             ? std::numeric_limits<std::int64_t>::max()
             : now + t;
}

// When an entry stops answering: after its TTL, and never after the key's expiry (an
// absolute time, so a put that ran late cannot stretch a `valid` past it).
std::int64_t deadline(std::int64_t now, std::chrono::milliseconds ttl, const Verdict& v) noexcept {
  const std::int64_t by_ttl = expiry(now, ttl);
  return v.expires_at ? std::min(by_ttl, to_unix_millis(*v.expires_at)) : by_ttl;
}

std::size_t round_up_pow2(std::size_t n) {
  std::size_t p = 1;
  while (p < n && p < (std::size_t{1} << 16)) p <<= 1;
  return p;
}

std::size_t round_down_pow2(std::size_t n) {
  std::size_t p = 1;
  while (p <= n / 2) p <<= 1;
  return p;
}

// A shard's least share of max_bytes: more than the largest verdict the Validator puts
// (64 scopes of 128 characters and 4 KiB of metadata: 12,740 bytes with its node).
constexpr std::size_t kMinShardBytes = std::size_t{16} << 10;

}  // namespace

struct MemoryCache::Impl {
  detail::SipHasher sip;
  std::shared_ptr<Clock> clock;
  std::size_t per_shard_capacity = 1;
  std::size_t per_shard_bytes = 0;
  std::atomic<std::uint64_t> epoch{0};
  std::vector<std::unique_ptr<Shard>> shards;

  struct Where {
    Shard& shard;
    std::size_t stripe = 0;
    KeyId id;
  };
  [[nodiscard]] Where locate(std::string_view pk) const noexcept {
    const KeyId id = sip.wide(pk);
    // Top bits pick the shard and stripe; the table uses the low bits for its buckets.
    Shard& s = *shards[(id.lo >> 48) & (shards.size() - 1)];
    return {s, static_cast<std::size_t>((id.lo >> 40) % kStripesPerShard), id};
  }
  [[nodiscard]] std::uint64_t token(const Where& w) const noexcept {
    // Both counters only grow, so the sum changes whenever either does.
    return w.shard.stripes[w.stripe].load(std::memory_order_acquire) +
           epoch.load(std::memory_order_acquire);
  }
  // A hit reads the clock coarsely (Clock::coarse_now(): a few ns rather than a few tens),
  // which trails the time by up to `lag_ms`; so an entry answers only while its
  // deadline is past the latest the time may be (a deadline is whole milliseconds and
  // the reading's are cut down, so the lag rounded up is enough). A put, on the miss
  // path, sets the deadline from a full reading: a TTL is cut by at most `lag_ms`.
  std::int64_t lag_ms = 0;  // coarse_resolution(), rounded up to milliseconds
  [[nodiscard]] std::int64_t latest_ms() const noexcept {
    return to_unix_millis(clock->coarse_now()) + lag_ms;
  }

  // REQUIRES: the table holds an entry other than `keep`. Samples a few buckets from a
  // rotating cursor; evicts an expired entry if one turns up, else the first seen, never
  // `keep` (the entry a put is replacing). Returns false when it found nothing to evict.
  bool evict_one(Shard& s, std::int64_t now, const Node* keep) APIKEYS_REQUIRES(s.mu) {
    const std::size_t buckets = s.table.bucket_count();
    std::optional<KeyId> victim;
    for (std::size_t probes = 0, seen = 0; probes < buckets && seen < 4; ++probes) {
      const std::size_t b = s.evict_cursor++ % buckets;
      for (Node* n = s.table.bucket(b); n != nullptr; n = n->next) {
        if (n == keep) continue;
        ++seen;
        if (n->expires_ms <= now) return s.table.erase(KeyId(n->id));
        if (!victim) victim = n->id;
      }
    }
    return victim && s.table.erase(*victim);
  }

  // Evicts until the shard has room for an entry of `add` bytes that replaces `old` (null:
  // a new entry), in entries and in bytes; stops when only `old` is left.
  void make_room(Shard& s, std::int64_t now, const Node* old, std::size_t add)
      APIKEYS_REQUIRES(s.mu) {
    const std::size_t others = old != nullptr ? 1 : 0;
    const std::size_t kept = old != nullptr ? Table::charge(*old) : 0;
    while (s.table.size() > others && (s.table.size() + 1 - others > per_shard_capacity ||
                                       s.table.bytes() - kept + add > per_shard_bytes)) {
      if (!evict_one(s, now, old)) return;
    }
  }
};

MemoryCache::MemoryCache(MemoryCacheOptions options) : impl_(std::make_unique<Impl>()) {
  impl_->clock = options.clock ? std::move(options.clock) : system_clock();
  const std::chrono::nanoseconds lag = impl_->clock->coarse_resolution();
  if (lag.count() > 0) impl_->lag_ms = std::chrono::ceil<std::chrono::milliseconds>(lag).count();
  const std::size_t capacity =
      std::clamp<std::size_t>(options.capacity, 1, MemoryCacheOptions::kMaxCapacity);
  const std::size_t n =
      std::min({round_up_pow2(std::max<std::size_t>(options.shards, 1)), round_up_pow2(capacity),
                round_down_pow2(std::max<std::size_t>(options.max_bytes / kMinShardBytes, 1))});
  // Rounded up; the usual (capacity + n - 1) / n wraps to nothing near SIZE_MAX.
  impl_->per_shard_capacity = capacity / n + (capacity % n != 0 ? 1 : 0);
  impl_->per_shard_bytes = options.max_bytes / n + (options.max_bytes % n != 0 ? 1 : 0);
  impl_->shards.reserve(n);
  for (std::size_t i = 0; i < n; ++i) impl_->shards.push_back(std::make_unique<Shard>());
}

MemoryCache::~MemoryCache() = default;

std::optional<Verdict> MemoryCache::get(std::string_view public_key, const Digest& presented) {
  Verdict v;
  if (!get_into(public_key, presented, v)) return std::nullopt;
  return v;
}

bool MemoryCache::get_into(std::string_view public_key, const Digest& presented, Verdict& out) {
  if (public_key.size() > kMaxPublicKeyLength) return false;
  auto w = impl_->locate(public_key);
  const std::int64_t now = impl_->latest_ms();
  detail::MutexLock lock(w.shard.mu);
  Node* n = w.shard.table.find(w.id);
  static_assert(sizeof(void*) != 8 || sizeof(Node) == 104, "a node outgrew its 112-byte chunk");
  static_assert(sizeof(Node) + 2 * sizeof(void*) == kEntryBytes, "kEntryBytes is documented");
  if (n == nullptr) return false;
  if (n->expires_ms <= now) {
    w.shard.table.erase(w.id);
    return false;
  }
  if (!constant_time_equal(n->presented, presented)) return false;
  n->fill(out);
  return true;
}

std::uint64_t MemoryCache::fill_token(std::string_view public_key) {
  return impl_->token(impl_->locate(public_key));
}

void MemoryCache::put(std::string_view public_key, const Digest& presented, const Verdict& verdict,
                      std::chrono::milliseconds ttl, std::uint64_t token) {
  if (ttl.count() <= 0 || public_key.size() > kMaxPublicKeyLength) return;
  auto w = impl_->locate(public_key);
  const KeyId& key = w.id;
  // Built, and its block written, outside the lock; the deadline is taken from a clock
  // read before it, so it is never later than one taken under the lock would be.
  // Rounded down (to_unix_millis() rounds a time before 1970 up): never a later deadline.
  const std::int64_t full_ms =
      std::chrono::floor<std::chrono::milliseconds>(impl_->clock->now().time_since_epoch()).count();
  const std::int64_t due = deadline(full_ms, ttl, verdict);
  const std::int64_t now = impl_->latest_ms();  // as get() judges it
  // Dead on arrival (a TTL within the clock's lag, a key about to expire): no get would
  // answer it, and storing it could evict entries that would.
  if (due <= now) return;
  NodePtr fresh = make_node(key, due, presented, verdict);
  const std::size_t add = Table::charge(*fresh);
  NodePtr old;  // a replaced node: declared before the lock, so freed after it
  detail::MutexLock lock(w.shard.mu);
  if (impl_->token(w) != token) return;  // erased or cleared since the fill began
  Node* n = w.shard.table.find(key);
  if (n != nullptr) {
    // A guess at the secret never pushes the owner's verdict out, whatever its code: if
    // only a `valid` were kept, a guess's second try would hit the cache for a revoked,
    // disabled or expired key its owner had just used and read the store for an active
    // one, telling the two apart without the secret.
    const Node& prev = *n;
    if (prev.expires_ms > now && detail::secret_matched(prev.code) &&
        !detail::secret_matched(verdict.code) && !constant_time_equal(prev.presented, presented)) {
      return;
    }
  }
  impl_->make_room(w.shard, now, n, add);
  if (n != nullptr) {
    old = w.shard.table.replace(n, fresh);
  } else {
    w.shard.table.insert(fresh);
  }
}

void MemoryCache::erase(std::string_view public_key) {
  auto w = impl_->locate(public_key);
  detail::MutexLock lock(w.shard.mu);
  w.shard.stripes[w.stripe].fetch_add(1, std::memory_order_acq_rel);
  if (public_key.size() <= kMaxPublicKeyLength) w.shard.table.erase(w.id);
}

void MemoryCache::clear() {
  // Bump first: a put that has not yet taken its shard lock will now be refused; one
  // that already did is removed below when this reaches its shard.
  impl_->epoch.fetch_add(1, std::memory_order_acq_rel);
  for (auto& s : impl_->shards) {
    detail::MutexLock lock(s->mu);
    s->table.clear();
  }
}

std::size_t MemoryCache::size() const {
  std::size_t n = 0;
  for (const auto& s : impl_->shards) {
    detail::MutexLock lock(s->mu);
    n += s->table.size();
  }
  return n;
}

std::size_t MemoryCache::bytes() const {
  std::size_t n = 0;
  for (const auto& s : impl_->shards) {
    detail::MutexLock lock(s->mu);
    n += s->table.bytes();
  }
  return n;
}

}  // namespace apikeys
