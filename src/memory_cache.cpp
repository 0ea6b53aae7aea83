#include "apikeys/memory_cache.hpp"

#include <openssl/crypto.h>
#include <pthread.h>

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
#include <thread>
#include <type_traits>
#include <typeinfo>
#include <utility>
#include <vector>

#include "apikeys/error.hpp"
#include "epoch.hpp"
#include "memory_cache_probe.hpp"
#include "result_fields.hpp"
#include "siphash.hpp"
#include "thread_annotations.hpp"
#include "wipe.hpp"

namespace apikeys {

namespace {

constexpr std::size_t kStripesPerShard = 64;

// A public key's identity in the table: its 128-bit SipHash under the cache's random
// key. Two public keys share an entry only if their tags collide, a chance of 2^-128
// per pair under a key no caller sees (no tag leaves the cache), and even then an
// entry answers only the secret it was stored with (its proof). `lo` also
// picks the shard, the stripe and the bucket. Holding the tag rather than the key (up
// to kMaxPublicKeyLength characters) keeps a node at 88 bytes, and a lookup compares two
// words.
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
// bucket's chain: 88 bytes on 64-bit platforms, so that with the allocator's header it
// takes a 96-byte chunk. `proof` is the proof of the secret that earned the verdict
// (src/memory_cache_probe.hpp): a lookup answers only when it presents the same one.
// What only some verdicts have follows the node in the same allocation: the key's
// expiry (8 bytes, Unix milliseconds), then the Policy block (scopes, metadata, rate
// limits, a kept lineage). `expires_ms` is the entry's own deadline in the cache's time
// (Impl::latest_ms()), never after the key's expiry (see deadline()); the key's expiry
// is returned with the verdict, so the Validator checks it against its own clock
// whatever clock this cache has.
struct Node {
  enum Flag : std::uint8_t {
    kHasPolicy = 1,
    kHasAdmission = 2,
    kHasCredits = 4,
    kHasBlock = 8,    // a Policy block follows the node (after the expiry, if any)
    kHasExpiry = 16,  // the key's expiry follows the node
  };
  static constexpr std::size_t kExpiryBytes = 8;

  std::atomic<Node*> next{nullptr};
  KeyId id;
  std::int64_t expires_ms = 0;
  detail::CacheProof proof;
  ValidationCode code = ValidationCode::error;
  std::uint8_t flags = 0;
  Uuid account_id;
  Uuid key_id;

  // REQUIRES: the allocation holds the tail that `v` and `block` call for.
  Node(const KeyId& k, std::int64_t expires, const detail::CacheProof& p, const Verdict& v,
       bool block) noexcept
      : id(k),
        expires_ms(expires),
        proof(p),
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
  // REQUIRES: a detail::ReadSection or the shard's mutex (the node stays allocated).
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
NodePtr make_node(const KeyId& key, std::int64_t expires, const detail::CacheProof& proof,
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
  static_assert(std::is_nothrow_constructible_v<Node, const KeyId&, std::int64_t,
                                                const detail::CacheProof&, const Verdict&, bool>,
                "a node is built after its memory is taken");
  return NodePtr(new (mem) Node(key, expires, proof, verdict, block > 0));
}

void free_node(void* p) noexcept { NodeDeleter()(static_cast<Node*>(p)); }

// A power-of-two array of chain heads, in one block with its count, so that a reader
// that loaded the block's address reads the count that goes with it.
class Buckets {
 public:
  // Throws std::bad_alloc.
  static Buckets* make(std::size_t count) {
    void* mem = ::operator new(sizeof(Buckets) + count * sizeof(std::atomic<Node*>));
    auto* b = new (mem) Buckets(count);
    for (std::size_t i = 0; i < count; ++i) new (&b->slots()[i]) std::atomic<Node*>(nullptr);
    return b;
  }
  // Frees the array, not the nodes.
  static void free_array(void* p) noexcept {
    auto* b = static_cast<Buckets*>(p);
    b->~Buckets();  // std::atomic<Node*> is trivially destructible
    ::operator delete(p);
  }
  // Frees the array and every node its chains hold.
  static void free_all(void* p) noexcept {
    auto* b = static_cast<Buckets*>(p);
    for (std::size_t i = 0; i < b->count(); ++i) {
      Node* n = b->slots()[i].load(std::memory_order_relaxed);
      while (n != nullptr) {
        Node* dead = n;
        n = dead->next.load(std::memory_order_relaxed);
        NodeDeleter()(dead);
      }
    }
    free_array(p);
  }

  [[nodiscard]] std::size_t count() const noexcept { return count_; }
  [[nodiscard]] std::atomic<Node*>& head(std::uint64_t hash) noexcept {
    return slots()[static_cast<std::size_t>(hash) & (count_ - 1)];
  }
  [[nodiscard]] std::atomic<Node*>& at(std::size_t b) noexcept { return slots()[b]; }

 private:
  explicit Buckets(std::size_t count) noexcept : count_(count) {}
  std::atomic<Node*>* slots() noexcept { return reinterpret_cast<std::atomic<Node*>*>(this + 1); }
  std::size_t count_;
};
static_assert(sizeof(Buckets) % alignof(std::atomic<Node*>) == 0, "slots follow the header");

// A chained hash table with power-of-two buckets indexed by the key's SipHash (keyed,
// so uniform; no modulo by a prime) that point at their first node. std::unordered_map
// (libstdc++) points a bucket at the node *before* its first one, another node that is
// somewhere else in memory: on a cache hit that was one more dependent cache miss, and
// a division, per lookup. Load factor at most 1: 8 to 16 bytes of buckets per entry.
// It keeps the bytes its entries count for (MemoryCache::kEntryBytes each, plus their
// Policy blocks).
//
// Read without a lock: find() runs in a detail::ReadSection, concurrently with the
// writers. A node is immutable once linked but for its `next`; every store of a link
// is seq_cst, every load by a reader too (a plain load on x86), and a node or bucket
// array taken out is retired to `limbo_`, freed once no section can still hold it
// (src/epoch.hpp). A reader sees each chain as it was at some instant, or, while
// grow() relinks the nodes, part of another chain: it may then miss a key that is
// there, never find one that is not, and always reaches the end of a chain (grow()
// links a node only to nodes already in its new chain).
// REQUIRES: the owner serialises every call but find() (the shard's mutex).
class Table {
 public:
  Table() = default;
  Table(const Table&) = delete;
  Table& operator=(const Table&) = delete;
  ~Table() {
    Buckets* b = buckets_.load(std::memory_order_relaxed);
    if (b != nullptr) Buckets::free_all(b);
  }

  [[nodiscard]] std::size_t size() const noexcept { return size_; }
  [[nodiscard]] std::size_t bytes() const noexcept { return bytes_; }
  [[nodiscard]] std::size_t retired() const noexcept { return limbo_.pending(); }
  [[nodiscard]] static std::size_t charge(const Node& n) noexcept {
    return MemoryCache::kEntryBytes + n.expiry_bytes() + Policy::bytes(n.policy());
  }
  [[nodiscard]] std::size_t bucket_count() const noexcept {
    const Buckets* b = buckets_.load(std::memory_order_relaxed);
    return b != nullptr ? b->count() : 0;
  }
  [[nodiscard]] Node* bucket(std::size_t i) const noexcept {
    return buckets_.load(std::memory_order_relaxed)->at(i).load(std::memory_order_relaxed);
  }

  // The node for `k`, or null. REQUIRES: a ReadSection open for as long as the node
  // is used, or the owner's serialisation.
  [[nodiscard]] Node* find(const KeyId& k) const noexcept {
    Buckets* b = buckets_.load(std::memory_order_seq_cst);
    if (b == nullptr) return nullptr;
    for (Node* n = b->head(k.lo).load(std::memory_order_seq_cst); n != nullptr;
         n = n->next.load(std::memory_order_seq_cst)) {
      if (n->id == k) return n;
    }
    return nullptr;
  }

  // The first node of k's chain, or null: for a prefetch. REQUIRES: as find().
  [[nodiscard]] const Node* first(const KeyId& k) const noexcept {
    Buckets* b = buckets_.load(std::memory_order_seq_cst);
    return b == nullptr ? nullptr : b->head(k.lo).load(std::memory_order_seq_cst);
  }

  // Links `fresh`. REQUIRES: no node has its key. May throw std::bad_alloc when the
  // buckets grow (the table is unchanged and `fresh` still the caller's).
  void insert(NodePtr& fresh) {
    if (size_ + 1 > bucket_count()) grow();
    Node* n = fresh.release();
    std::atomic<Node*>& head = buckets_.load(std::memory_order_relaxed)->head(n->id.lo);
    n->next.store(head.load(std::memory_order_relaxed), std::memory_order_relaxed);
    head.store(n, std::memory_order_seq_cst);  // publishes the node's fields
    ++size_;
    bytes_ += charge(*n);
  }

  // Puts `fresh` in the place of `old`, a node of this table with the same key, and
  // retires `old`.
  void replace(Node* old, NodePtr& fresh) noexcept {
    std::atomic<Node*>* link = &buckets_.load(std::memory_order_relaxed)->head(old->id.lo);
    for (Node* at = link->load(std::memory_order_relaxed); at != nullptr;
         link = &at->next, at = link->load(std::memory_order_relaxed)) {
      if (at == old) {
        Node* n = fresh.release();
        n->next.store(old->next.load(std::memory_order_relaxed), std::memory_order_relaxed);
        link->store(n, std::memory_order_seq_cst);
        bytes_ -= charge(*old);
        bytes_ += charge(*n);
        limbo_.retire(old, free_node);
        return;
      }
    }
  }

  bool erase(const KeyId& k) noexcept {
    Buckets* b = buckets_.load(std::memory_order_relaxed);
    if (b == nullptr) return false;
    std::atomic<Node*>* link = &b->head(k.lo);
    for (Node* at = link->load(std::memory_order_relaxed); at != nullptr;
         link = &at->next, at = link->load(std::memory_order_relaxed)) {
      if (at->id == k) {
        link->store(at->next.load(std::memory_order_relaxed), std::memory_order_seq_cst);
        bytes_ -= charge(*at);
        --size_;
        limbo_.retire(at, free_node);
        return true;
      }
    }
    return false;
  }

  // Takes every entry out at once: the table is left empty, without buckets (the next
  // insert grows it again), and its old array goes to the limbo with every node its
  // chains hold. MemoryCache::clear() then waits for the sections and collect()s.
  void clear() noexcept {
    Buckets* b = buckets_.exchange(nullptr, std::memory_order_seq_cst);
    size_ = 0;
    bytes_ = 0;
    if (b != nullptr) limbo_.retire(b, Buckets::free_all);
  }

  // Frees what the limbo holds that no section can still reach.
  void collect() noexcept { limbo_.collect(); }

 private:
  // Relinks every node into an array twice the size, in place. A node is linked to
  // the head of its new chain, which holds only nodes moved before it: a reader
  // following links, old or new, always comes to an end.
  void grow() {
    Buckets* old = buckets_.load(std::memory_order_relaxed);
    Buckets* next = Buckets::make(old == nullptr ? 8 : old->count() * 2);
    if (old != nullptr) {
      for (std::size_t i = 0; i < old->count(); ++i) {
        Node* n = old->at(i).load(std::memory_order_relaxed);
        while (n != nullptr) {
          Node* after = n->next.load(std::memory_order_relaxed);
          std::atomic<Node*>& to = next->head(n->id.lo);
          n->next.store(to.load(std::memory_order_relaxed), std::memory_order_seq_cst);
          to.store(n, std::memory_order_relaxed);  // published with the array below
          n = after;
        }
      }
    }
    buckets_.store(next, std::memory_order_seq_cst);
    if (old != nullptr) {
      limbo_.retire(old, Buckets::free_array);
      limbo_.collect();  // the old array is most of what a grow leaves behind
    }
  }

  std::atomic<Buckets*> buckets_{nullptr};
  std::size_t size_ = 0;
  std::size_t bytes_ = 0;
  detail::Limbo limbo_;
};

struct alignas(64) Shard {
  detail::Mutex mu;
  Table table APIKEYS_GUARDED_BY(mu);
  // The table for find() in a detail::ReadSection, without `mu` (Table says why that is
  // safe); nothing else may be called through it.
  [[nodiscard]] const Table& readable() const APIKEYS_NO_THREAD_SAFETY_ANALYSIS { return table; }
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

// When an entry stops answering, in the cache's time (the time of day less `shift`,
// Impl::latest_ms()), from `start`, a full reading in that time: after its TTL, and
// never after the key's expiry (a time of day, so a put that ran late cannot stretch a
// `valid` past it).
std::int64_t deadline(std::int64_t start, std::int64_t shift, std::chrono::milliseconds ttl,
                      const Verdict& v) noexcept {
  const std::int64_t by_ttl = expiry(start, ttl);
  if (!v.expires_at) return by_ttl;
  // Rounded down, before 1970 too. `shift` is within [-2^62, 0] and the expiry within
  // +-2^44 ms: no overflow.
  const std::int64_t until =
      std::chrono::floor<std::chrono::milliseconds>(v.expires_at->time_since_epoch()).count();
  return std::min(by_ttl, until - shift);
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

// The lock MemoryCache::Impl::restep() takes: one for the process, as a step of the
// clock is rare. A few tries, then the caller goes without it (and errs early): a
// holder kept off its core (a real-time thread spinning above it, a fork() taken while
// another thread held it) never keeps a get waiting. A child of fork() starts with it
// free; the handler is registered when the library is loaded, before any fork.
std::atomic<bool> g_restepping{false};
constexpr int kRestepTries = 4;

void free_restep_lock_in_child() noexcept { g_restepping.store(false, std::memory_order_relaxed); }

[[maybe_unused]] const bool g_restep_fork_handler =
    pthread_atfork(nullptr, nullptr, free_restep_lock_in_child) == 0;

bool take_restep_lock() noexcept {
  for (int tries = 0; tries < kRestepTries; ++tries) {
    if (tries > 0) std::this_thread::yield();
    if (!g_restepping.exchange(true, std::memory_order_acquire)) return true;
  }
  return false;
}

void release_restep_lock() noexcept { g_restepping.store(false, std::memory_order_release); }

}  // namespace

struct MemoryCache::Impl {
  detail::SipHasher sip;
  // The keys of the two kinds of proof (src/memory_cache_probe.hpp): of a secret, of a
  // digest. Wiped when the cache dies (with one and the proofs in a memory dump, a
  // guess at a secret could be tested offline).
  detail::SipHasher secret_mac;
  detail::SipHasher digest_mac;
  Impl() = default;
  Impl(const Impl&) = delete;
  Impl& operator=(const Impl&) = delete;
  ~Impl() {
    static_assert(std::is_trivially_copyable_v<detail::SipHasher>, "a key is plain bytes");
    OPENSSL_cleanse(&secret_mac, sizeof secret_mac);
    OPENSSL_cleanse(&digest_mac, sizeof digest_mac);
  }
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
  [[nodiscard]] Where locate(std::string_view pk) const noexcept { return where(sip.wide(pk)); }
  [[nodiscard]] Where where(const KeyId& id) const noexcept {
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

  // The cache's time is the clock's time of day less `shift_us`, which starts at 0 and
  // falls by as much as the time of day is ever set back: so it goes on from where it
  // was rather than go back, and a TTL is never stretched by a step back. A step back
  // shows as the time of day less Clock::steady_now() (the offset, `offset_us` last
  // seen) falling; a rise (the time set forward, or a machine that slept: the steady
  // reading stands still meanwhile) is time passing, and the cache's time moves with
  // the time of day (doc/memory-cache.md, "Time"). Two coarse readings taken one after
  // the other may straddle a tick: within `tolerance_us` (the clock's resolution and a
  // microsecond) nothing moves, so a step back smaller than that goes unnoticed. The
  // shift is kept in microseconds and rounded where it is used, towards an earlier end.
  static constexpr std::int64_t kMinShift = -(std::int64_t{1} << 62);
  std::int64_t tolerance_us = 1;
  mutable std::atomic<std::int64_t> offset_us{0};
  mutable std::atomic<std::int64_t> shift_us{0};

  // Microseconds of a time of day or a steady reading, whatever the TimePoint's unit.
  static std::int64_t micros(TimePoint t) noexcept {
    return std::chrono::floor<std::chrono::microseconds>(t.time_since_epoch()).count();
  }
  static std::int64_t micros(std::chrono::nanoseconds t) noexcept {
    return std::chrono::floor<std::chrono::microseconds>(t).count();
  }
  // a - b, saturated: a clock of the caller's may read near the ends of its range.
  static std::int64_t minus(std::int64_t a, std::int64_t b) noexcept {
    std::int64_t d = 0;
    if (!__builtin_sub_overflow(a, b, &d)) return d;
    return b < 0 ? std::numeric_limits<std::int64_t>::max()
                 : std::numeric_limits<std::int64_t>::min();
  }
  // The shift in milliseconds for the cache's time (rounded down: a later time) or for
  // an entry's start (rounded up: an earlier start).
  static std::int64_t shift_for_now(std::int64_t us) noexcept {
    return us / 1000 - (us % 1000 < 0 ? 1 : 0);
  }
  static std::int64_t shift_for_start(std::int64_t us) noexcept { return us / 1000; }

  // The offset from a reading `day` of the time of day and a steady reading after it:
  // a pause between the two makes it too low, which only a reader's check uses (and
  // then reads again, below).
  [[nodiscard]] std::int64_t offset_at(TimePoint day) const noexcept {
    return minus(micros(day), micros(clock->steady_now()));
  }
  // The offset for keeping: the steady reading taken first, so that a pause before the
  // time of day is read makes it too high, and a later reading then looks like a step
  // back (entries end early), never the reverse. Read again, a few times, while the
  // pause passes the tolerance.
  [[nodiscard]] std::int64_t offset_to_keep() const noexcept {
    std::int64_t offset = 0;
    for (int tries = 0; tries < 3; ++tries) {
      const std::int64_t before = micros(clock->steady_now());
      offset = minus(micros(clock->coarse_now()), before);
      if (minus(micros(clock->steady_now()), before) <= tolerance_us) break;
    }
    return offset;
  }
  // What a shift is for: the cache's time now (get, eviction), which errs late (entries
  // end early) with a shift too low; or an entry's start (put), which errs early with
  // a shift too high.
  enum class For { now, start };
  // The shift (us) for a reading `day` of the time of day, noting a step since the last
  // one seen. Writes nothing unless the offset moved. The offset is loaded before the
  // shift, and restep() stores the shift before the offset: a reader that sees a new
  // offset sees its shift.
  [[nodiscard]] std::int64_t shift_at(TimePoint day, For use) const noexcept {
    const std::int64_t offset = offset_at(day);
    const std::int64_t seen = offset_us.load(std::memory_order_acquire);
    if (offset >= seen - tolerance_us && offset <= seen + tolerance_us) {
      return shift_us.load(std::memory_order_acquire);
    }
    return restep(use == For::now ? minus(seen, offset) : 0);
  }
  // One thread at a time reads the pair afresh (the caller's may predate a step another
  // thread has taken) and takes the new offset; a fall is a step back, taken off the
  // shift before the new offset is stored. A thread that cannot have the lock at once
  // stores nothing and uses the shift as stored, less `fall` (its own pair's fall, or 0
  // for a put): too low a shift for the time now, too high for a start, so its
  // entries end early, never late.
  std::int64_t restep(std::int64_t fall) const noexcept {
    if (!take_restep_lock()) {
      const std::int64_t shift = shift_us.load(std::memory_order_acquire);
      return fall > 0 ? (shift < kMinShift + fall ? kMinShift : shift - fall) : shift;
    }
    const std::int64_t offset = offset_to_keep();
    const std::int64_t seen = offset_us.load(std::memory_order_relaxed);
    if (offset < seen - tolerance_us || offset > seen + tolerance_us) {
      if (offset < seen) {
        const std::int64_t back = seen - offset;
        const std::int64_t shift = shift_us.load(std::memory_order_relaxed);
        shift_us.store(shift < kMinShift + back ? kMinShift : shift - back,
                       std::memory_order_release);
      }
      offset_us.store(offset, std::memory_order_release);
    }
    release_restep_lock();
    return shift_us.load(std::memory_order_acquire);
  }

  // The cache's time, at the latest: what get() and eviction judge deadlines by.
  [[nodiscard]] std::int64_t latest_ms() const noexcept {
    const TimePoint day = clock->coarse_now();
    return to_unix_millis(day) - shift_for_now(shift_at(day, For::now)) + lag_ms;
  }

  // REQUIRES: the table holds an entry other than `keep`. Samples a few buckets from a
  // rotating cursor; evicts an expired entry if one turns up, else the first seen, never
  // `keep` (the entry a put is replacing). Returns false when it found nothing to evict.
  bool evict_one(Shard& s, std::int64_t now, const Node* keep) APIKEYS_REQUIRES(s.mu) {
    const std::size_t buckets = s.table.bucket_count();
    std::optional<KeyId> victim;
    for (std::size_t probes = 0, seen = 0; probes < buckets && seen < 4; ++probes) {
      const std::size_t b = s.evict_cursor++ % buckets;
      for (Node* n = s.table.bucket(b); n != nullptr; n = n->next.load(std::memory_order_relaxed)) {
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
  impl_->tolerance_us = Impl::micros(std::max(lag, std::chrono::nanoseconds(0))) + 1;
  impl_->offset_us = impl_->offset_to_keep();
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
  using detail::MemoryCacheProbe;
  return MemoryCacheProbe::get_into(*this, MemoryCacheProbe::tag(*this, public_key),
                                    MemoryCacheProbe::proof(*this, presented), out);
}

void MemoryCache::prefetch(std::string_view public_key) const noexcept {
  // Checked before the hash as well: a thread's first section is left to get_into().
  if (!detail::ReadSection::attached()) return;
  detail::MemoryCacheProbe::prefetch(*this, detail::MemoryCacheProbe::tag(*this, public_key));
}

std::uint64_t MemoryCache::fill_token(std::string_view public_key) {
  return impl_->token(impl_->locate(public_key));
}

void MemoryCache::put(std::string_view public_key, const Digest& presented, const Verdict& verdict,
                      std::chrono::milliseconds ttl, std::uint64_t token) {
  using detail::MemoryCacheProbe;
  MemoryCacheProbe::put(*this, MemoryCacheProbe::tag(*this, public_key),
                        MemoryCacheProbe::proof(*this, presented), verdict, ttl, token);
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
  bool held = false;
  for (auto& s : impl_->shards) {
    detail::MutexLock lock(s->mu);
    s->table.clear();
    held = held || s->table.retired() > 0;
  }
  if (!held) return;
  // Freed now, not left to a later write: once the gets that may still be reading what
  // was taken out are over (waited for outside every lock), each shard's limbo holds
  // nothing a section can reach.
  detail::synchronize();
  for (auto& s : impl_->shards) {
    detail::MutexLock lock(s->mu);
    s->table.collect();
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

namespace detail {

CacheTag MemoryCacheProbe::tag(const MemoryCache& cache, std::string_view public_key) noexcept {
  CacheTag t;
  if (public_key.size() > MemoryCache::kMaxPublicKeyLength) return t;
  t.id = cache.impl_->sip.wide(public_key);
  t.usable = true;
  return t;
}

Sip128 MemoryCacheProbe::domain(const MemoryCache& cache, const Hasher& hasher) {
  if (typeid(hasher) != typeid(HmacSha256Hasher)) return random_domain();
  std::string print;
  // HMACs of a public text under the peppers: no secret, but wiped when done, with each
  // digest returned (the hasher's own stack is its own).
  const WipeOnExit wipe_print(print);
  constexpr std::string_view kText = "apikeys MemoryCache proof domain";
  std::vector<std::uint32_t> ids = hasher.pepper_ids();
  std::sort(ids.begin(), ids.end());
  print.reserve(ids.size() * (sizeof(std::uint32_t) + sizeof(Digest::bytes) + 1));
  for (const std::uint32_t id : ids) {
    print.append(reinterpret_cast<const char*>(&id), sizeof id);
    if (std::optional<Digest> d = hasher.hash_with(kText, id)) {
      print.append(reinterpret_cast<const char*>(d->bytes.data()), d->bytes.size());
      OPENSSL_cleanse(d->bytes.data(), d->bytes.size());
    }
    print += ';';
  }
  return cache.impl_->digest_mac.mac(print);
}

Sip128 MemoryCacheProbe::random_domain() {
  return SipHasher().wide("");  // under a key drawn for it: nobody else's domain
}

CacheProof MemoryCacheProbe::proof(const MemoryCache& cache, std::string_view secret,
                                   const Sip128& domain) noexcept {
  Sip128 mac = cache.impl_->secret_mac.mac(secret);
  mac.lo ^= domain.lo;
  mac.hi ^= domain.hi;
  return CacheProof{mac};
}

CacheProof MemoryCacheProbe::proof(const MemoryCache& cache, const Digest& presented) noexcept {
  // The pepper id too: a digest under another pepper is another digest. SipHash-2-4, the
  // rounds of a MAC: what an entry answers rests on this being a PRF, which SipHash-1-3
  // (about 16 ns less a digest, in a loop) is not claimed to be.
  unsigned char bytes[sizeof presented.bytes + sizeof presented.pepper_id];
  std::memcpy(bytes, presented.bytes.data(), sizeof presented.bytes);
  std::memcpy(bytes + sizeof presented.bytes, &presented.pepper_id, sizeof presented.pepper_id);
  return CacheProof{cache.impl_->digest_mac.mac(
      std::string_view(reinterpret_cast<const char*>(bytes), sizeof bytes))};
}

void MemoryCacheProbe::prefetch(const MemoryCache& cache, const CacheTag& tag) noexcept {
  // A thread's first section allocates its slot, which may fail: that one is left to
  // get_into(), whose failure the caller handles. A hint never locks, allocates or throws.
  if (!tag.usable || !ReadSection::attached()) return;
  const auto w = cache.impl_->where(tag.id);
  // In a section: the bucket array may be retired meanwhile. The node may be freed
  // once the section closes; a prefetch of freed memory is harmless (it never faults).
  ReadSection section;
  const Node* n = w.shard.readable().first(w.id);
#if defined(__GNUC__)
  if (n != nullptr) {
    // Every line the node spans (88 bytes may straddle three), and the two after it,
    // where a verdict's expiry and Policy block follow.
    const char* at = reinterpret_cast<const char*>(n);
    __builtin_prefetch(at);
    __builtin_prefetch(at + 64);
    __builtin_prefetch(at + sizeof(Node) - 1);
    __builtin_prefetch(at + sizeof(Node) - 1 + 64);
    __builtin_prefetch(at + sizeof(Node) - 1 + 128);
  }
#endif
}

bool MemoryCacheProbe::get_into(MemoryCache& cache, const CacheTag& tag, const CacheProof& proof,
                                Verdict& out) {
  if (!tag.usable) return false;
  const MemoryCache::Impl& impl = *cache.impl_;
  const auto w = impl.where(tag.id);
  const std::int64_t now = impl.latest_ms();
  static_assert(sizeof(void*) != 8 || sizeof(Node) == 88, "a node outgrew its 96-byte chunk");
  static_assert(sizeof(Node) + 2 * sizeof(void*) == MemoryCache::kEntryBytes,
                "kEntryBytes is documented");
  {
    // No lock: a hit writes nothing that another thread reads (Table, "Read without a
    // lock"), so threads that hit on different cores never wait for each other's caches.
    ReadSection section;
    const Node* n = w.shard.readable().find(w.id);
    if (n == nullptr) return false;
    if (n->expires_ms > now) {
      if (!same_proof(n->proof, proof)) return false;
      n->fill(out);
      return true;
    }
  }
  // Past its deadline: taken out now rather than at its eviction, after the section
  // (a retire waits for sections when it is out of memory).
  MutexLock lock(w.shard.mu);
  const Node* n = w.shard.table.find(w.id);
  if (n != nullptr && n->expires_ms <= now) w.shard.table.erase(w.id);
  return false;
}

std::uint64_t MemoryCacheProbe::fill_token(MemoryCache& cache, const CacheTag& tag) {
  // An unusable tag's put() stores nothing, whatever its token.
  return tag.usable ? cache.impl_->token(cache.impl_->where(tag.id)) : 0;
}

void MemoryCacheProbe::put(MemoryCache& cache, const CacheTag& tag, const CacheProof& proof,
                           const Verdict& verdict, std::chrono::milliseconds ttl,
                           std::uint64_t token) {
  if (ttl.count() <= 0 || !tag.usable) return;
  MemoryCache::Impl& impl = *cache.impl_;
  const auto w = impl.where(tag.id);
  const KeyId& key = w.id;
  // Built, and its block written, outside the lock; the deadline is taken from a clock
  // read before it, so it is never later than one taken under the lock would be.
  // The shift first, then the time: a step back between the two would otherwise be in
  // the shift but not in the time, and the entry would live as much longer. In this
  // order it can only end early. Rounded down (to_unix_millis() rounds a time before
  // 1970 up): never a later deadline.
  const std::int64_t shift = MemoryCache::Impl::shift_for_start(
      impl.shift_at(impl.clock->coarse_now(), MemoryCache::Impl::For::start));
  const std::int64_t full_ms =
      std::chrono::floor<std::chrono::milliseconds>(impl.clock->now().time_since_epoch()).count();
  const std::int64_t due = deadline(full_ms - shift, shift, ttl, verdict);
  const std::int64_t now = impl.latest_ms();  // as get() judges it
  // Dead on arrival (a TTL within the clock's lag, a key about to expire): no get would
  // answer it, and storing it could evict entries that would.
  if (due <= now) return;
  NodePtr fresh = make_node(key, due, proof, verdict);
  const std::size_t add = Table::charge(*fresh);
  detail::MutexLock lock(w.shard.mu);
  if (impl.token(w) != token) return;  // erased or cleared since the fill began
  Node* n = w.shard.table.find(key);
  if (n != nullptr) {
    // A guess at the secret never pushes the owner's verdict out, whatever its code: if
    // only a `valid` were kept, a guess's second try would hit the cache for a revoked,
    // disabled or expired key its owner had just used and read the store for an active
    // one, telling the two apart without the secret.
    const Node& prev = *n;
    if (prev.expires_ms > now && detail::secret_matched(prev.code) &&
        !detail::secret_matched(verdict.code) && !same_proof(prev.proof, proof)) {
      return;
    }
  }
  impl.make_room(w.shard, now, n, add);
  if (n != nullptr) {
    w.shard.table.replace(n, fresh);
  } else {
    w.shard.table.insert(fresh);
  }
}

}  // namespace detail

}  // namespace apikeys
