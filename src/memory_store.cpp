#include "apikeys/memory_store.hpp"

#include <cstdint>
#include <cstring>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <shared_mutex>
#include <string>
#include <unordered_map>
#include <utility>
#include <vector>

#include "apikeys/error.hpp"
#include "decoy_reads.hpp"

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

}  // namespace

struct MemoryStore::Impl {
  explicit Impl(std::size_t max) : max_keys(max) {}

  const std::size_t max_keys;
  mutable std::shared_mutex mu;
  std::uint64_t next_seq = 0;
  // Owns the entries, inside its nodes (no separate block per entry: 16 bytes and one
  // dependent cache miss less). The key views the node's own public_key (never
  // modified after insert), so find() looks up a string_view without allocating; nodes
  // never move, so the other indexes keep plain pointers.
  std::unordered_map<std::string_view, Entry> by_public_key;
  std::unordered_map<Uuid, Entry*, UuidHash> by_key_id;
  std::unordered_map<Uuid, std::map<OrderKey, Entry*, std::greater<>>, UuidHash> by_account;
  // Every entry, without holes (a removal moves the last one into its place): find()'s
  // decoy on a miss is one of them, picked by the key's hash, however sparse the hash
  // tables have become (their buckets never shrink).
  std::vector<Entry*> dense;

  // REQUIRES: mu held (shared or exclusive).
  Entry* owned_by(const Uuid& account_id, const Uuid& key_id) const {
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
  // Built in a node handle, so the key can be pointed at the node's own string. The
  // staging table is per thread and always left empty: it keeps only its bucket array,
  // so staging allocates nothing but the node itself.
  thread_local std::unordered_map<std::string_view, Entry> staging;
  staging.emplace(std::string_view(), Entry{record, 0});
  auto node = staging.extract(staging.begin());
  Entry* entry = &node.mapped();
  KeyInfo& info = entry->record.info;
  info.created_at = to_millis(info.created_at);
  if (info.expires_at) info.expires_at = to_millis(*info.expires_at);
  if (info.last_used_at) info.last_used_at = to_millis(*info.last_used_at);

  std::unique_lock lock(impl_->mu);
  if (impl_->by_public_key.count(info.public_key) != 0) {
    throw Error(ErrorCode::already_exists, "insert: a key with this public key already exists");
  }
  if (impl_->by_key_id.count(info.key_id) != 0) {
    throw Error(ErrorCode::already_exists, "insert: a key with this key id already exists");
  }
  if (impl_->by_public_key.size() >= impl_->max_keys) {
    throw Error(ErrorCode::storage, "insert: memory store is full (" +
                                        std::to_string(impl_->max_keys) + " keys)");
  }
  entry->seq = impl_->next_seq++;
  Entry* raw = entry;
  node.key() = std::string_view(info.public_key);
  // Copies, not references into *entry: a failed emplace below may already have freed it.
  const Uuid key_id = info.key_id;
  const Uuid account_id = info.account_id;
  const OrderKey order{info.created_at, raw->seq};
  // Strong guarantee: if an allocation throws, undo the index entries already made.
  auto& account = impl_->by_account[account_id];
  bool listed = false;
  try {
    raw->dense_index = impl_->dense.size();
    impl_->dense.push_back(raw);
    listed = true;
    account.emplace(order, raw);
    impl_->by_key_id.emplace(key_id, raw);
    impl_->by_public_key.insert(std::move(node));
  } catch (...) {
    if (listed) impl_->dense.pop_back();
    impl_->by_key_id.erase(key_id);
    account.erase(order);
    if (account.empty()) impl_->by_account.erase(account_id);
    throw;
  }
}

std::optional<KeyRecord> MemoryStore::find(std::string_view public_key) {
  std::shared_lock lock(impl_->mu);
  const auto& table = impl_->by_public_key;
  auto it = table.find(public_key);
  if (it != table.end()) return it->second.record;
  // PITFALLS #4 (timing oracles): a miss copies a record too, one picked by the key's
  // hash among all entries (so not the one just probed, nor always the same, cache-hot
  // one), so that it costs about what a hit costs.
  const auto& dense = impl_->dense;
  if (dense.empty()) return std::nullopt;
  const Entry* decoy =
      dense[(std::hash<std::string_view>{}(public_key) * 0x9e3779b97f4a7c15ULL) % dense.size()];
  // As a hit does: compare the key's bytes (a hit's probe reads the entry's own key
  // string, another line), then copy the record.
  const bool same = std::string_view(decoy->record.info.public_key) == public_key;
  const KeyRecord copy = decoy->record;
#if defined(__GNUC__)
  asm volatile("" : : "r"(&copy), "r"(same) : "memory");  // the work is the point: keep it
#endif
  ++detail::decoy_reads;
  return std::nullopt;
}

std::vector<KeyInfo> MemoryStore::list(const Uuid& account_id) {
  std::vector<KeyInfo> out;
  std::shared_lock lock(impl_->mu);
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
  std::unique_lock lock(impl_->mu);
  Entry* entry = impl_->owned_by(account_id, key_id);
  if (entry == nullptr) return std::nullopt;
  entry->record.info.status = status;
  return entry->record.info;
}

std::optional<KeyInfo> MemoryStore::remove(const Uuid& account_id, const Uuid& key_id) {
  std::unique_lock lock(impl_->mu);
  Entry* entry = impl_->owned_by(account_id, key_id);
  if (entry == nullptr) return std::nullopt;
  KeyInfo removed = entry->record.info;  // Copy before any erase: nothing below throws.

  Entry* last = impl_->dense.back();
  impl_->dense[entry->dense_index] = last;
  last->dense_index = entry->dense_index;
  impl_->dense.pop_back();

  auto account = impl_->by_account.find(account_id);
  account->second.erase(OrderKey{removed.created_at, entry->seq});
  if (account->second.empty()) impl_->by_account.erase(account);
  impl_->by_key_id.erase(key_id);
  // By a view of `removed`'s copy: the map's own key views the entry's string, which
  // erase frees.
  impl_->by_public_key.erase(std::string_view(removed.public_key));
  return removed;
}

void MemoryStore::record_last_use(const std::vector<LastUse>& uses) {
  std::unique_lock lock(impl_->mu);
  for (const LastUse& use : uses) {
    auto it = impl_->by_key_id.find(use.key_id);
    if (it == impl_->by_key_id.end()) continue;
    const TimePoint at = to_millis(use.at);
    auto& last = it->second->record.info.last_used_at;
    if (!last || *last < at) last = at;
  }
}

std::size_t MemoryStore::size() const {
  std::shared_lock lock(impl_->mu);
  return impl_->by_public_key.size();
}

}  // namespace apikeys
