#include "apikeys/memory_store.hpp"

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <unordered_map>
#include <utility>
#include <vector>

#include "apikeys/error.hpp"
#include "decoy_reads.hpp"
#include "thread_annotations.hpp"

namespace apikeys {
namespace {

struct UuidHash {
  std::size_t operator()(const Uuid& id) const noexcept {
    std::uint64_t hi = 0;
    std::uint64_t lo = 0;
    std::memcpy(&hi, id.bytes().data(), 8);
    std::memcpy(&lo, id.bytes().data() + 8, 8);
    // Account ids need not be random (any UUID version), so mix both halves.
    return static_cast<std::size_t>(hi ^ (lo * 0x9e3779b97f4a7c15ULL) ^ (hi >> 29));
  }
};

// Every bundled store keeps millisecond precision (types.hpp); truncating here makes
// MemoryStore round-trip and order exactly like SqliteStore.
TimePoint to_millis(TimePoint t) noexcept { return from_unix_millis(to_unix_millis(t)); }

// List order: created_at descending, then most recently inserted first.
using OrderKey = std::pair<TimePoint, std::uint64_t>;

struct Entry {
  KeyRecord record;
  std::uint64_t seq = 0;
  std::size_t dense_index = 0;  // Its place in Impl::dense.
};

// The public-key index: open addressing with linear probing, a power-of-two array of
// {tag, entry} slots at most half full. Its own table, not std::unordered_map, so that
// find() controls which memory a hit and a miss touch (see find()). A tag is
// the key's 64-bit hash with the low bit set (0 marks an empty slot); the home slot is
// taken from the tag, so growing and shrinking never rehash a string.
struct Slot {
  std::uint64_t tag = 0;
  Entry* entry = nullptr;
};

std::uint64_t tag_of(std::string_view public_key) noexcept {
  return static_cast<std::uint64_t>(std::hash<std::string_view>{}(public_key)) | 1U;
}

class KeyIndex {
 public:
  KeyIndex() : slots_(kMinSlots) {}

  [[nodiscard]] std::size_t home(std::uint64_t tag) const noexcept {
    return static_cast<std::size_t>((tag * 0x9e3779b97f4a7c15ULL) >> shift_);
  }
  [[nodiscard]] std::size_t next(std::size_t i) const noexcept {
    return (i + 1) & (slots_.size() - 1);
  }
  [[nodiscard]] const Slot& at(std::size_t i) const noexcept { return slots_[i]; }

  // Room for one more entry: may reallocate (and throw), before anything is changed.
  void reserve_one(std::size_t size) { resize_for(size + 1); }

  // REQUIRES: the key is absent and reserve_one() was called.
  void add(std::uint64_t tag, Entry* entry) noexcept {
    std::size_t i = home(tag);
    while (slots_[i].tag != 0) i = next(i);
    slots_[i] = Slot{tag, entry};
  }

  // Removes `entry` (present, under `tag`), moving later slots of its run back so no
  // probe stops early (no tombstones: a table emptied by removals probes like a new one).
  void erase(std::uint64_t tag, const Entry* entry) noexcept {
    std::size_t i = home(tag);
    while (slots_[i].entry != entry) i = next(i);
    for (std::size_t j = next(i);; j = next(j)) {
      if (slots_[j].tag == 0) break;
      const std::size_t want = home(slots_[j].tag);
      // Move slot j into the hole at i unless its home lies cyclically in (i, j].
      const std::size_t mask = slots_.size() - 1;
      if (((j - want) & mask) >= ((j - i) & mask)) {
        slots_[i] = slots_[j];
        i = j;
      }
    }
    slots_[i] = Slot{};
  }

  // After a removal: halves the array while it is at most 1/8 full. Best effort: when
  // the smaller array cannot be allocated, the bigger one stays.
  void shrink_for(std::size_t size) noexcept {
    std::size_t want = slots_.size();
    while (want > kMinSlots && size * 8 <= want) want /= 2;
    if (want == slots_.size()) return;
    try {
      rebuild(want);
    } catch (...) {
    }
  }

 private:
  static constexpr std::size_t kMinSlots = 16;

  void resize_for(std::size_t size) {
    std::size_t want = slots_.size();
    while (size * 2 > want) want *= 2;
    if (want != slots_.size()) rebuild(want);
  }

  void rebuild(std::size_t count) {
    std::vector<Slot> old(count);  // may throw: nothing changed yet
    old.swap(slots_);
    shift_ = 64;
    for (std::size_t c = count; c > 1; c /= 2) --shift_;
    for (const Slot& s : old) {
      if (s.tag != 0) add(s.tag, s.entry);
    }
  }

  std::vector<Slot> slots_;
  int shift_ = 60;  // 64 - log2(slots_.size())
};

}  // namespace

struct MemoryStore::Impl {
  explicit Impl(std::size_t max) : max_keys(max) {}

  const std::size_t max_keys;
  // Readers (find, list, size) share it; writers hold it exclusively. The entries the
  // indexes point at are reached only through them, so under it too.
  mutable detail::SharedMutex mu;
  std::uint64_t next_seq APIKEYS_GUARDED_BY(mu) = 0;
  // Owns the entries, without holes (a removal moves the last one into its place):
  // find()'s decoy on a miss is one of them, picked by the key's hash. Entries never
  // move, so the indexes keep plain pointers.
  std::vector<std::unique_ptr<Entry>> dense APIKEYS_GUARDED_BY(mu);
  KeyIndex by_public_key APIKEYS_GUARDED_BY(mu);
  std::unordered_map<Uuid, Entry*, UuidHash> by_key_id APIKEYS_GUARDED_BY(mu);
  std::unordered_map<Uuid, std::map<OrderKey, Entry*, std::greater<>>, UuidHash> by_account
      APIKEYS_GUARDED_BY(mu);

  // The key's entry, else null.
  [[nodiscard]] Entry* by_key(std::string_view public_key, std::uint64_t tag) const noexcept
      APIKEYS_REQUIRES_SHARED(mu) {
    for (std::size_t i = by_public_key.home(tag);; i = by_public_key.next(i)) {
      const Slot& s = by_public_key.at(i);
      if (s.tag == 0) return nullptr;
      if (s.tag == tag && s.entry->record.info.public_key == public_key) return s.entry;
    }
  }

  Entry* owned_by(const Uuid& account_id, const Uuid& key_id) const APIKEYS_REQUIRES_SHARED(mu) {
    auto it = by_key_id.find(key_id);
    if (it == by_key_id.end() || it->second->record.info.account_id != account_id) {
      return nullptr;
    }
    return it->second;
  }
};

MemoryStore::MemoryStore(std::size_t max_keys) : impl_(std::make_unique<Impl>(max_keys)) {}

MemoryStore::~MemoryStore() = default;

void MemoryStore::insert(const KeyRecord& record) {
  auto owned = std::make_unique<Entry>(Entry{record, 0, 0});
  Entry* entry = owned.get();
  KeyInfo& info = entry->record.info;
  info.created_at = to_millis(info.created_at);
  if (info.expires_at) info.expires_at = to_millis(*info.expires_at);
  if (info.last_used_at) info.last_used_at = to_millis(*info.last_used_at);
  const std::uint64_t tag = tag_of(info.public_key);

  detail::ExclusiveLock lock(impl_->mu);
  if (impl_->by_key(info.public_key, tag) != nullptr) {
    throw Error(ErrorCode::already_exists, "insert: a key with this public key already exists");
  }
  if (impl_->by_key_id.count(info.key_id) != 0) {
    throw Error(ErrorCode::already_exists, "insert: a key with this key id already exists");
  }
  if (impl_->dense.size() >= impl_->max_keys) {
    throw Error(ErrorCode::storage,
                "insert: memory store is full (" + std::to_string(impl_->max_keys) + " keys)");
  }
  // Strong guarantee: everything that can throw comes first, and undoes what it did.
  impl_->by_public_key.reserve_one(impl_->dense.size());
  auto& dense = impl_->dense;
  if (dense.size() == dense.capacity()) dense.reserve(std::max<std::size_t>(16, dense.size() * 2));
  entry->seq = impl_->next_seq++;
  const OrderKey order{info.created_at, entry->seq};
  auto& account = impl_->by_account[info.account_id];
  try {
    account.emplace(order, entry);
    impl_->by_key_id.emplace(info.key_id, entry);
  } catch (...) {
    account.erase(order);
    if (account.empty()) impl_->by_account.erase(info.account_id);
    throw;
  }
  entry->dense_index = dense.size();
  dense.push_back(std::move(owned));  // reserved: cannot throw
  impl_->by_public_key.add(tag, entry);
}

std::optional<KeyRecord> MemoryStore::find(std::string_view public_key) {
  const std::uint64_t tag = tag_of(public_key);
  Impl& impl = *impl_;
  detail::SharedLock lock(impl.mu);
  // Timing oracles: a miss must cost what a hit costs. A hit reads its
  // slot, then its entry (to compare the key's bytes), then copies the record. A miss
  // reads slots up to an empty one, then does the same to a decoy entry picked by the
  // key's hash among all entries (not the one just probed, nor always the same,
  // cache-hot one): compare its key's bytes, copy its record. The decoy's address is
  // made to depend on the last slot read (its tag, 0 on a miss: the value is unchanged
  // but the CPU must wait for the load), so a miss's reads form one chain as long as a
  // hit's instead of running alongside the probe. Without that, and with
  // std::unordered_map under it, a miss answered 0.12 us sooner than a hit at 100,000
  // keys. BENCHMARKS.md has the measurements.
  std::size_t i = impl.by_public_key.home(tag);
  std::uint64_t last = 0;
  for (;; i = impl.by_public_key.next(i)) {
    const Slot& s = impl.by_public_key.at(i);
    last = s.tag;
    if (last == 0) break;
    if (last == tag && s.entry->record.info.public_key == public_key) return s.entry->record;
  }
  if (impl.dense.empty()) return std::nullopt;
#if defined(__GNUC__)
  asm("" : "+r"(last));  // opaque to the compiler: it must not fold `last` (0) away
#endif
  const std::uint64_t mixed = (tag ^ (tag >> 29)) * 0xbf58476d1ce4e5b9ULL;  // not home()'s bits
  const std::uint64_t n = impl.dense.size();
  const auto pick =
      static_cast<std::size_t>(n <= UINT32_MAX ? ((mixed >> 32) * n) >> 32 : mixed % n);
  const Entry& decoy = *impl.dense[pick + static_cast<std::size_t>(last)];
  const bool same = decoy.record.info.public_key == public_key;
  const KeyRecord copy = decoy.record;
#if defined(__GNUC__)
  asm volatile("" : : "r"(&copy), "r"(same) : "memory");  // the work is the point: keep it
#endif
  ++detail::decoy_reads();
  return std::nullopt;
}

std::vector<KeyInfo> MemoryStore::list(const Uuid& account_id) {
  std::vector<KeyInfo> out;
  detail::SharedLock lock(impl_->mu);
  auto it = impl_->by_account.find(account_id);
  if (it == impl_->by_account.end()) return out;
  out.reserve(it->second.size());
  for (const auto& [order, entry] : it->second) {
    (void)order;
    out.push_back(entry->record.info);
  }
  return out;
}

std::optional<KeyInfo> MemoryStore::set_status(const Uuid& account_id, const Uuid& key_id,
                                               KeyStatus status) {
  detail::ExclusiveLock lock(impl_->mu);
  Entry* entry = impl_->owned_by(account_id, key_id);
  if (entry == nullptr) return std::nullopt;
  entry->record.info.status = status;
  return entry->record.info;
}

std::optional<KeyInfo> MemoryStore::remove(const Uuid& account_id, const Uuid& key_id) {
  detail::ExclusiveLock lock(impl_->mu);
  Entry* entry = impl_->owned_by(account_id, key_id);
  if (entry == nullptr) return std::nullopt;
  KeyInfo removed = entry->record.info;  // Copy before any erase: nothing below throws.

  impl_->by_public_key.erase(tag_of(removed.public_key), entry);
  auto account = impl_->by_account.find(account_id);
  account->second.erase(OrderKey{removed.created_at, entry->seq});
  if (account->second.empty()) impl_->by_account.erase(account);
  impl_->by_key_id.erase(key_id);
  // Last: frees the entry (the last one takes its place in `dense`).
  auto& dense = impl_->dense;
  const std::size_t hole = entry->dense_index;
  dense.back()->dense_index = hole;
  std::swap(dense[hole], dense.back());
  dense.pop_back();
  impl_->by_public_key.shrink_for(dense.size());
  return removed;
}

void MemoryStore::record_last_use(const std::vector<LastUse>& uses) {
  detail::ExclusiveLock lock(impl_->mu);
  for (const LastUse& use : uses) {
    auto it = impl_->by_key_id.find(use.key_id);
    if (it == impl_->by_key_id.end()) continue;
    const TimePoint at = to_millis(use.at);
    auto& last = it->second->record.info.last_used_at;
    if (!last || *last < at) last = at;
  }
}

std::size_t MemoryStore::size() const {
  detail::SharedLock lock(impl_->mu);
  return impl_->dense.size();
}

}  // namespace apikeys
