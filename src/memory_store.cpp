#include "apikeys/memory_store.hpp"

#include <algorithm>
#include <array>
#include <cassert>
#include <chrono>
#include <cstdint>
#include <cstring>
#include <functional>
#include <limits>
#include <map>
#include <memory>
#include <optional>
#include <set>
#include <string>
#include <string_view>
#include <unordered_map>
#include <utility>
#include <vector>

#include "apikeys/error.hpp"
#include "credits_ops.hpp"
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

// An account's index order, that of list_page(): created_at descending, then key_id
// descending (std::greater over the pair). list() orders keys with equal created_at by
// insertion instead, from Entry::seq.
using OrderKey = std::pair<TimePoint, Uuid>;

// Scopes and rate limits, as Entry keeps them after its text: each scope its length (4
// bytes) then its bytes; each rate limit its name's length and bytes, then the limit,
// the period in milliseconds and the burst (8 bytes each). Native byte order: the bytes
// never leave the process. Whatever a caller stored round-trips, even text KeyManager
// would have refused.
constexpr std::size_t kLengthBytes = 4;
static_assert(sizeof(Uuid) == 16, "a rotation link is stored as 16 bytes");
constexpr std::size_t kLimitNumberBytes = 24;

void put_bytes(char*& out, const void* p, std::size_t n) noexcept {
  if (n > 0) std::memcpy(out, p, n);
  out += n;
}
void put_text(char*& out, std::string_view text) noexcept {
  // Fits: pack() checked that the whole text, this included, is below 4 GiB.
  const auto n = static_cast<std::uint32_t>(text.size());
  put_bytes(out, &n, sizeof n);
  put_bytes(out, text.data(), text.size());
}
template <typename T>
T get_value(const char*& in) noexcept {
  T v;
  std::memcpy(&v, in, sizeof v);
  in += sizeof v;
  return v;
}
std::string_view get_text(const char*& in) noexcept {
  const auto n = get_value<std::uint32_t>(in);
  const std::string_view text(in, n);
  in += n;
  return text;
}

// The encoded size of `scopes` and of `limits` (pack() checks the total against 4 GiB).
std::size_t encoded_size(const std::vector<std::string>& scopes) {
  std::size_t n = 0;
  for (const std::string& scope : scopes) n += kLengthBytes + scope.size();
  return n;
}
std::size_t encoded_size(const std::vector<RateLimit>& limits) {
  std::size_t n = 0;
  for (const RateLimit& l : limits) n += kLengthBytes + l.name.size() + kLimitNumberBytes;
  return n;
}
void encode(const std::vector<std::string>& scopes, char*& out) noexcept {
  for (const std::string& scope : scopes) put_text(out, scope);
}
void encode(const std::vector<RateLimit>& limits, char*& out) noexcept {
  for (const RateLimit& l : limits) {
    put_text(out, l.name);
    const std::int64_t period = l.period.count();
    put_bytes(out, &l.limit, sizeof l.limit);
    put_bytes(out, &period, sizeof period);
    put_bytes(out, &l.burst, sizeof l.burst);
  }
}
void decode(std::string_view bytes, std::vector<std::string>& scopes) {
  const char* in = bytes.data();
  const char* const end = in + bytes.size();
  while (in < end) scopes.emplace_back(get_text(in));
}
void decode(std::string_view bytes, std::vector<RateLimit>& limits) {
  const char* in = bytes.data();
  const char* const end = in + bytes.size();
  while (in < end) {
    RateLimit& l = limits.emplace_back();
    l.name = get_text(in);
    l.limit = get_value<std::uint64_t>(in);
    l.period = std::chrono::milliseconds(get_value<std::int64_t>(in));
    l.burst = get_value<std::uint64_t>(in);
  }
}

// A key's text fields (public key, title, description, metadata) follow its Entry in
// the same allocation, in that order: a read of a key (find()'s hit, and its decoy on a
// miss) touches the entry and the bytes right after it, which the CPU fetches together.
// With a string each, where the bytes landed depended on the key's history: a key
// revoked right after its creation had them side by side, one created among other work
// had them kilobytes apart, and find() answered the first kind 16-22 % sooner at
// 10,000 keys, which an attacker could time (a revoked key, or a miss whose decoy was
// such a key, answered faster than a wrong secret to an active key). Every entry now
// has one layout whatever its history: a change that rewrites a key's fields builds a
// new entry and puts it in the old one's place (Impl::swap_in()). The scopes and rate
// limits follow the text, encoded (see encode()), then the rotation links the key has
// (16 bytes each): nothing of a key is a block of its own.
struct Entry;
struct EntryFree {
  void operator()(Entry* e) const noexcept;
};
using EntryPtr = std::unique_ptr<Entry, EntryFree>;

// Where each text field ends, from the start of the text.
struct TextEnds {
  // public key, title, description, metadata, scopes and rate limits (encoded)
  static constexpr std::size_t kFields = 6;
  std::array<std::uint32_t, kFields> at{};
};

// A key as the store holds it: the fields every key has inline, its times as Unix
// milliseconds (every stored time has millisecond precision, so nothing is lost), its
// text after it (see above). 168 bytes on 64-bit libstdc++ plus the text, against 440
// for a whole KeyRecord with the two counters; info() and record()
// rebuild the public structs. Whether the key's lineage has credits is one flag: the
// balance lives in Impl::credits. Never moved or copied: made by pack(), in place.
struct Entry {
  enum Flag : std::uint8_t {
    kExpires = 1,
    kUsed = 2,
    kCredits = 4,
    kRotatedFrom = 8,  // the link's 16 bytes follow the last field
    kRotatedTo = 16,   // and then this one's
  };

  Uuid key_id;
  Uuid account_id;
  Uuid lineage_id;  // nil: the key's own id
  Digest digest;
  KeyStatus status = KeyStatus::active;
  std::uint8_t flags = 0;
  TextEnds text;
  std::int64_t created_ms = 0;
  std::int64_t updated_ms = 0;
  std::int64_t expires_ms = 0;  // when kExpires
  std::int64_t used_ms = 0;     // when kUsed
  std::uint64_t version = 1;
  std::uint64_t seq = 0;
  std::size_t dense_index = 0;  // Its place in Impl::dense.

  Entry() = default;
  Entry(const Entry&) = delete;
  Entry& operator=(const Entry&) = delete;
  ~Entry() = default;

  [[nodiscard]] std::string_view public_key() const noexcept { return field(0); }
  [[nodiscard]] std::string_view title() const noexcept { return field(1); }
  [[nodiscard]] std::string_view description() const noexcept { return field(2); }
  [[nodiscard]] std::string_view metadata() const noexcept { return field(3); }
  [[nodiscard]] std::string_view scopes() const noexcept { return field(4); }
  [[nodiscard]] std::string_view rate_limits() const noexcept { return field(5); }
  [[nodiscard]] std::optional<Uuid> rotated_from() const noexcept { return link(kRotatedFrom, 0); }
  [[nodiscard]] std::optional<Uuid> rotated_to() const noexcept {
    return link(kRotatedTo, (flags & kRotatedFrom) != 0 ? 1 : 0);
  }

  // An entry holding `info` and `digest` as stored (times truncated to milliseconds),
  // not yet in any index. May throw std::bad_alloc, or Error(invalid_argument) for text
  // past 4 GiB.
  static EntryPtr pack(const KeyInfo& info, const Digest& digest) {
    static_assert(sizeof(void*) != 8 || sizeof(std::string) != 32 || sizeof(KeyInfo) == 384,
                  "KeyInfo has a new field: pack and unpack it here");
    const std::array<std::string_view, 4> parts{info.public_key, info.title, info.description,
                                                info.metadata};
    const std::array<std::size_t, TextEnds::kFields> sizes{
        parts[0].size(), parts[1].size(),           parts[2].size(),
        parts[3].size(), encoded_size(info.scopes), encoded_size(info.rate_limits)};
    TextEnds ends;
    std::size_t total = 0;
    for (std::size_t i = 0; i < sizes.size(); ++i) {
      total += sizes[i];
      if (total > std::numeric_limits<std::uint32_t>::max()) {
        throw Error(ErrorCode::invalid_argument, "MemoryStore: a key's text passes 4 GiB");
      }
      ends.at[i] = static_cast<std::uint32_t>(total);
    }
    const std::size_t links =
        (info.rotated_from ? sizeof(Uuid) : 0) + (info.rotated_to ? sizeof(Uuid) : 0);
    void* memory = ::operator new(sizeof(Entry) + total + links);
    EntryPtr entry(new (memory) Entry());  // cannot throw
    Entry& e = *entry;
    char* out = reinterpret_cast<char*>(memory) + sizeof(Entry);
    for (const std::string_view part : parts) out = std::copy(part.begin(), part.end(), out);
    encode(info.scopes, out);
    encode(info.rate_limits, out);
    if (info.rotated_from) {
      e.flags |= kRotatedFrom;
      put_bytes(out, info.rotated_from->bytes().data(), sizeof(Uuid));
    }
    if (info.rotated_to) {
      e.flags |= kRotatedTo;
      put_bytes(out, info.rotated_to->bytes().data(), sizeof(Uuid));
    }
    e.text = ends;
    e.key_id = info.key_id;
    e.account_id = info.account_id;
    e.lineage_id = info.lineage_id;
    e.digest = digest;
    e.status = info.status;
    e.created_ms = to_unix_millis(info.created_at);
    e.updated_ms = to_unix_millis(info.updated_at);
    if (info.expires_at) {
      e.flags |= kExpires;
      e.expires_ms = to_unix_millis(*info.expires_at);
    }
    if (info.last_used_at) {
      e.flags |= kUsed;
      e.used_ms = to_unix_millis(*info.last_used_at);
    }
    if (info.credits) e.flags |= kCredits;
    e.version = info.version;
    return entry;
  }

  [[nodiscard]] const Uuid& lineage() const noexcept {
    return lineage_id.is_nil() ? key_id : lineage_id;
  }
  [[nodiscard]] TimePoint created_at() const noexcept { return from_unix_millis(created_ms); }
  void set_credits(bool has) noexcept {
    flags = static_cast<std::uint8_t>(has ? flags | kCredits : flags & ~kCredits);
  }

  // The key as KeyInfo; its credits, when its lineage has them, are Credits{} (see
  // Impl::with_credits()).
  [[nodiscard]] KeyInfo info() const {
    KeyInfo k;
    verdict_fields(k);
    k.title = title();
    k.description = description();
    k.created_at = created_at();
    if ((flags & kUsed) != 0) k.last_used_at = from_unix_millis(used_ms);
    k.updated_at = from_unix_millis(updated_ms);
    k.version = version;
    k.rotated_from = rotated_from();
    k.rotated_to = rotated_to();
    return k;
  }
  [[nodiscard]] KeyRecord record() const { return KeyRecord{info(), digest}; }

  // The fields a validation reads (Store::find_for_validation()); the others are left
  // as a default KeyInfo has them.
  [[nodiscard]] KeyRecord verdict_record() const {
    KeyRecord r;
    verdict_fields(r.info);
    r.digest = digest;
    return r;
  }

 private:
  // Sets the KeyInfo fields a validation reads, as info() shows them.
  void verdict_fields(KeyInfo& k) const {
    k.key_id = key_id;
    k.account_id = account_id;
    k.public_key = public_key();
    k.metadata = metadata();
    k.status = status;
    if ((flags & kExpires) != 0) k.expires_at = from_unix_millis(expires_ms);
    k.lineage_id = lineage_id;
    if ((flags & kCredits) != 0) k.credits = Credits{};
    decode(scopes(), k.scopes);
    decode(rate_limits(), k.rate_limits);
  }

  [[nodiscard]] std::string_view field(std::size_t i) const noexcept {
    const std::uint32_t begin = i == 0 ? 0 : text.at[i - 1];
    if (text.at[i] == begin) return {};
    return {reinterpret_cast<const char*>(this) + sizeof(Entry) + begin, text.at[i] - begin};
  }
  // Rotation link `flag`, the `index`th of those the entry has after its last field.
  [[nodiscard]] std::optional<Uuid> link(std::uint8_t flag, std::size_t index) const noexcept {
    if ((flags & flag) == 0) return std::nullopt;
    std::array<std::uint8_t, 16> bytes{};
    const char* at = reinterpret_cast<const char*>(this) + sizeof(Entry) +
                     text.at[TextEnds::kFields - 1] + index * sizeof(Uuid);
    std::memcpy(bytes.data(), at, bytes.size());
    return Uuid(bytes);
  }
};

static_assert(sizeof(void*) != 8 || sizeof(Entry) == 168, "Entry's size is documented");

void EntryFree::operator()(Entry* e) const noexcept {
  e->~Entry();
  ::operator delete(static_cast<void*>(e));
}

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

  // Points `old`'s slot (present, under `tag`) at `fresh`, an entry for the same key.
  void repoint(std::uint64_t tag, const Entry* old, Entry* fresh) noexcept {
    std::size_t i = home(tag);
    while (slots_[i].entry != old) i = next(i);
    slots_[i].entry = fresh;
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

// An account's index in list_page() order (created_at descending, then key_id
// descending), holding the entries themselves: their created_at and key_id never
// change while they are in it. A node is then the tree's links and one pointer (48
// bytes from the allocator) rather than a copy of the order key as well (80).
struct PageOrder {
  using is_transparent = void;
  static OrderKey key(const Entry* e) noexcept { return {e->created_at(), e->key_id}; }
  bool operator()(const Entry* a, const Entry* b) const noexcept { return key(a) > key(b); }
  bool operator()(const Entry* a, const OrderKey& b) const noexcept { return key(a) > b; }
  bool operator()(const OrderKey& a, const Entry* b) const noexcept { return a > key(b); }
};
using AccountIndex = std::set<Entry*, PageOrder>;

// `key` with the fields replace() writes taken from `next` (Store::replace()).
KeyInfo replaced(const KeyInfo& key, const KeyInfo& next) {
  KeyInfo out = key;
  out.title = next.title;
  out.description = next.description;
  out.metadata = next.metadata;
  out.scopes = next.scopes;
  out.rate_limits = next.rate_limits;
  out.status = next.status;
  out.expires_at =
      next.expires_at ? std::optional<TimePoint>(to_millis(*next.expires_at)) : std::nullopt;
  out.updated_at = to_millis(next.updated_at);
  out.rotated_to = next.rotated_to;
  out.version = key.version + 1;
  return out;
}

// An entry for `record`, its times truncated, not yet in any index.
EntryPtr new_entry(const KeyRecord& record) { return Entry::pack(record.info, record.digest); }

// The audit trail. Events live in one map ordered by account, then in audit_events()
// order (time descending, then event_id descending), so an account's page is one walk
// from a lower bound; a second index, oldest first, serves prune_audit() and the bound.
struct AuditKey {
  Uuid account_id;
  TimePoint time{};
  Uuid event_id;
};

struct AuditOrder {
  bool operator()(const AuditKey& a, const AuditKey& b) const noexcept {
    if (a.account_id != b.account_id) return a.account_id < b.account_id;
    if (a.time != b.time) return a.time > b.time;
    return b.event_id < a.event_id;
  }
};

using AuditLog = std::map<AuditKey, AuditEvent, AuditOrder>;
// (time, event_id) ascending -> the account holding the event.
using AuditAge = std::map<OrderKey, Uuid>;

// A lineage's credits, and the account all its keys belong to (where a refill's event
// finds the lineage's newest key).
struct LineageCredits {
  Credits credits;
  Uuid account_id;
  std::uint64_t generation = 0;  // CreditTake::generation: a new one each time it is set
};

// Events made ready to store: every node allocated, nothing in the store changed yet.
// Inserting the nodes allocates nothing, so a write commits its events without throwing.
struct StagedAudit {
  std::vector<AuditLog::node_type> events;
  std::vector<AuditAge::node_type> ages;
};

}  // namespace

struct MemoryStore::Impl {
  explicit Impl(const MemoryStoreOptions& options)
      : max_keys(options.max_keys), max_audit_events(options.max_audit_events) {}

  const std::size_t max_keys;
  const std::size_t max_audit_events;
  // Readers (find, get, list, list_page, size) share it; writers hold it exclusively.
  // The entries the indexes point at are reached only through them, so under it too.
  mutable detail::SharedMutex mu;
  std::uint64_t next_seq APIKEYS_GUARDED_BY(mu) = 0;
  // Owns the entries, without holes (a removal moves the last one into its place):
  // find()'s decoy on a miss is one of them, picked by the key's hash. The indexes keep
  // plain pointers: an entry is replaced only whole, by swap_in(), which updates them.
  std::vector<EntryPtr> dense APIKEYS_GUARDED_BY(mu);
  KeyIndex by_public_key APIKEYS_GUARDED_BY(mu);
  std::unordered_map<Uuid, Entry*, UuidHash> by_key_id APIKEYS_GUARDED_BY(mu);
  std::unordered_map<Uuid, AccountIndex, UuidHash> by_account APIKEYS_GUARDED_BY(mu);
  // Credits by lineage. Each entry's kCredits flag says only whether its lineage has
  // credits (what find() must tell, without a second lookup); get() and the
  // listings show the values from here.
  std::unordered_map<Uuid, LineageCredits, UuidHash> credits APIKEYS_GUARDED_BY(mu);
  // The last LineageCredits::generation given out; each new balance takes the next.
  std::uint64_t last_generation APIKEYS_GUARDED_BY(mu) = 0;
  AuditLog audit_log APIKEYS_GUARDED_BY(mu);
  AuditAge audit_age APIKEYS_GUARDED_BY(mu);  // the same events, oldest first

  // `info` with its lineage's credits as they are stored.
  KeyInfo with_credits(KeyInfo info) const APIKEYS_REQUIRES_SHARED(mu) {
    auto it = credits.find(info.lineage());
    if (it == credits.end()) {
      info.credits.reset();
    } else {
      info.credits = it->second.credits;
    }
    return info;
  }

  // The lineage's newest key (created_at descending, then key_id descending: the
  // account index's order), else null. O(keys of the account).
  [[nodiscard]] const Entry* newest_of_lineage(const LineageCredits& held,
                                               const Uuid& lineage) const
      APIKEYS_REQUIRES_SHARED(mu) {
    auto account = by_account.find(held.account_id);
    if (account == by_account.end()) return nullptr;
    for (Entry* entry : account->second) {
      if (entry->lineage() == lineage) return entry;
    }
    return nullptr;
  }

  // Marks every key of the lineage (all in one account) as having credits or not.
  void mark_lineage(const Uuid& account_id, const Uuid& lineage, bool has) APIKEYS_REQUIRES(mu) {
    auto account = by_account.find(account_id);
    if (account == by_account.end()) return;
    for (Entry* entry : account->second) {
      if (entry->lineage() == lineage) entry->set_credits(has);
    }
  }

  // The key's entry, else null.
  [[nodiscard]] Entry* by_key(std::string_view public_key, std::uint64_t tag) const noexcept
      APIKEYS_REQUIRES_SHARED(mu) {
    for (std::size_t i = by_public_key.home(tag);; i = by_public_key.next(i)) {
      const Slot& s = by_public_key.at(i);
      if (s.tag == 0) return nullptr;
      if (s.tag == tag && s.entry->public_key() == public_key) return s.entry;
    }
  }

  Entry* owned_by(const Uuid& account_id, const Uuid& key_id) const APIKEYS_REQUIRES_SHARED(mu) {
    auto it = by_key_id.find(key_id);
    if (it == by_key_id.end() || it->second->account_id != account_id) {
      return nullptr;
    }
    return it->second;
  }

  // Throws what add() would for `entry` (already_exists, storage); changes nothing.
  void check_addable(const Entry& entry) const APIKEYS_REQUIRES_SHARED(mu) {
    if (by_key(entry.public_key(), tag_of(entry.public_key())) != nullptr) {
      throw Error(ErrorCode::already_exists, "insert: a key with this public key already exists");
    }
    if (by_key_id.count(entry.key_id) != 0) {
      throw Error(ErrorCode::already_exists, "insert: a key with this key id already exists");
    }
    if (dense.size() >= max_keys) {
      throw Error(ErrorCode::storage,
                  "insert: memory store is full (" + std::to_string(max_keys) + " keys)");
    }
  }

  // Adds the entry (made by new_entry()), or throws (already_exists, storage, bad_alloc)
  // having changed nothing: everything that can throw comes first, and undoes what it did.
  void add(EntryPtr owned) APIKEYS_REQUIRES(mu) {
    Entry* entry = owned.get();
    const std::uint64_t tag = tag_of(entry->public_key());
    check_addable(*entry);
    by_public_key.reserve_one(dense.size());
    if (dense.size() == dense.capacity()) {
      dense.reserve(std::max<std::size_t>(16, dense.size() * 2));
    }
    auto& account = by_account[entry->account_id];
    try {
      account.insert(entry);
      by_key_id.emplace(entry->key_id, entry);
    } catch (...) {
      account.erase(entry);
      if (account.empty()) by_account.erase(entry->account_id);
      throw;
    }
    entry->seq = next_seq++;
    entry->dense_index = dense.size();
    dense.push_back(std::move(owned));  // reserved: cannot throw
    by_public_key.add(tag, entry);
  }

  // Puts `fresh` in `old`'s place in every index, with old's place in list() and in
  // `dense`, and frees `old`. REQUIRES: the same key (public key, key id, account and
  // creation time), rewritten. Cannot throw: nothing is allocated (the account index's
  // node is reused).
  void swap_in(Entry* old, EntryPtr fresh) noexcept APIKEYS_REQUIRES(mu) {
    Entry* entry = fresh.get();
    entry->seq = old->seq;
    entry->dense_index = old->dense_index;
    by_public_key.repoint(tag_of(old->public_key()), old, entry);
    // Every entry is in each index (asserted; checked, so that a broken index never
    // reaches past an end).
    const auto id = by_key_id.find(old->key_id);
    assert(id != by_key_id.end());
    if (id != by_key_id.end()) id->second = entry;
    const auto account = by_account.find(old->account_id);
    assert(account != by_account.end());
    if (account != by_account.end()) {
      auto node = account->second.extract(old);
      assert(!node.empty());
      if (!node.empty()) {
        node.value() = entry;
        account->second.insert(std::move(node));
      }
    }
    dense[entry->dense_index] = std::move(fresh);  // frees old
  }

  // Asks `audit` (when there is one) for the event of one key going from `before` to
  // `after`, and stages it. Throws (whatever the audit throws, bad_alloc, or
  // already_exists for an event id already stored at that time) having changed nothing
  // in the store.
  void stage(StagedAudit& staged, const ChangeAudit* audit, const KeyInfo* before,
             const KeyInfo* after) const APIKEYS_REQUIRES_SHARED(mu) {
    if (audit == nullptr) return;
    std::optional<AuditEvent> event = audit->event(before, after);
    if (!event) return;
    event->time = to_millis(event->time);
    const OrderKey age{event->time, event->event_id};
    bool taken = audit_age.count(age) != 0;
    for (const AuditAge::node_type& node : staged.ages) taken = taken || node.key() == age;
    if (taken) {
      throw Error(ErrorCode::already_exists, "audit: an event with this id is already stored");
    }
    const AuditKey key{event->account_id, event->time, event->event_id};
    const Uuid account = event->account_id;
    AuditLog one_event;
    one_event.emplace(key, std::move(*event));
    AuditAge one_age;
    one_age.emplace(age, account);
    staged.events.push_back(one_event.extract(one_event.begin()));
    staged.ages.push_back(one_age.extract(one_age.begin()));
  }

  // Stores the staged events; then, beyond max_audit_events, drops the oldest. Called
  // once the change is made: it allocates nothing and cannot throw.
  void commit(StagedAudit& staged) APIKEYS_REQUIRES(mu) {
    for (AuditLog::node_type& node : staged.events) audit_log.insert(std::move(node));
    for (AuditAge::node_type& node : staged.ages) audit_age.insert(std::move(node));
    while (audit_age.size() > max_audit_events) erase_event(audit_age.begin());
  }

  // Removes one event from both indexes.
  void erase_event(AuditAge::iterator oldest) APIKEYS_REQUIRES(mu) {
    audit_log.erase(AuditKey{oldest->second, oldest->first.first, oldest->first.second});
    audit_age.erase(oldest);
  }

  void insert(const KeyRecord& record, const ChangeAudit* audit);
  // find() (`kVerdict` false) and find_for_validation() (true).
  template <bool kVerdict>
  std::optional<KeyRecord> find(std::string_view public_key) APIKEYS_EXCLUDES(mu);
  WriteResult replace(const Uuid& account_id, const KeyInfo& next, std::uint64_t expected_version,
                      const ChangeAudit* audit);
  WriteResult rotate(const Uuid& account_id, const KeyInfo& old_next,
                     std::uint64_t expected_version, const KeyRecord& successor,
                     const ChangeAudit* audit);
  std::optional<KeyInfo> remove(const Uuid& account_id, const Uuid& key_id,
                                const ChangeAudit* audit);
  std::vector<KeyInfo> revoke_all(const Uuid& account_id, TimePoint at, const ChangeAudit* audit);
  std::optional<KeyInfo> change_credits(const Uuid& account_id, const Uuid& key_id,
                                        const CreditsChange& change, const ChangeAudit* audit);
  std::size_t replace_digests(const std::vector<DigestChange>& changes, const ChangeAudit* audit);
  CreditTake take_credits(const Uuid& lineage_id, std::uint64_t min, std::uint64_t max,
                          TimePoint now, const ChangeAudit* audit);
  // return_credits(), checked against `generation` unless it is null.
  void return_credits(const Uuid& lineage_id, std::uint64_t n, std::int64_t period,
                      const std::uint64_t* generation);
};

namespace {
MemoryStoreOptions with_max_keys(std::size_t max_keys) {
  MemoryStoreOptions options;
  options.max_keys = max_keys;
  return options;
}
}  // namespace

MemoryStore::MemoryStore(std::size_t max_keys) : MemoryStore(with_max_keys(max_keys)) {}

MemoryStore::MemoryStore(const MemoryStoreOptions& options)
    : impl_(std::make_unique<Impl>(options)) {}

MemoryStore::~MemoryStore() = default;

void MemoryStore::insert(const KeyRecord& record) { impl_->insert(record, nullptr); }

void MemoryStore::insert_audited(const KeyRecord& record, const ChangeAudit& audit) {
  impl_->insert(record, &audit);
}

void MemoryStore::Impl::insert(const KeyRecord& record, const ChangeAudit* audit) {
  EntryPtr entry = new_entry(record);  // allocates outside the lock
  const KeyInfo& info = record.info;
  const bool new_credits = info.credits && info.lineage() == info.key_id;
  detail::ExclusiveLock lock(mu);
  StagedAudit staged;
  if (audit != nullptr) {
    check_addable(*entry);          // a refused insert is not audited
    KeyInfo after = entry->info();  // as stored: the lineage's credits, or its own
    auto existing = credits.find(after.lineage());
    if (existing != credits.end()) {
      after.credits = existing->second.credits;
    } else if (new_credits) {
      after.credits = info.credits;
    } else {
      after.credits.reset();
    }
    stage(staged, audit, nullptr, &after);
  }
  Entry* added = entry.get();
  if (new_credits) {
    const bool fresh = credits
                           .emplace(info.lineage(), LineageCredits{*info.credits, info.account_id,
                                                                   last_generation + 1})
                           .second;
    try {
      add(std::move(entry));
    } catch (...) {
      if (fresh) credits.erase(info.lineage());  // both or neither
      throw;
    }
    if (fresh) ++last_generation;
  } else {
    add(std::move(entry));
  }
  added->set_credits(credits.count(added->lineage()) != 0);
  commit(staged);
}

// find() and find_for_validation(): a hit's answer, and the decoy's on a miss, is
// Entry::record() or, with kVerdict, Entry::verdict_record().
template <bool kVerdict>
std::optional<KeyRecord> MemoryStore::Impl::find(std::string_view public_key) {
  const std::uint64_t tag = tag_of(public_key);
  detail::SharedLock lock(mu);
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
  std::size_t i = by_public_key.home(tag);
  std::uint64_t last = 0;
  for (;; i = by_public_key.next(i)) {
    const Slot& s = by_public_key.at(i);
    last = s.tag;
    if (last == 0) break;
    if (last == tag && s.entry->public_key() == public_key) {
      return kVerdict ? s.entry->verdict_record() : s.entry->record();
    }
  }
  if (dense.empty()) return std::nullopt;
#if defined(__GNUC__)
  asm("" : "+r"(last));  // opaque to the compiler: it must not fold `last` (0) away
#endif
  const std::uint64_t mixed = (tag ^ (tag >> 29)) * 0xbf58476d1ce4e5b9ULL;  // not home()'s bits
  const std::uint64_t n = dense.size();
  const auto pick =
      static_cast<std::size_t>(n <= UINT32_MAX ? ((mixed >> 32) * n) >> 32 : mixed % n);
  const Entry& decoy = *dense[pick + static_cast<std::size_t>(last)];
  const bool same = decoy.public_key() == public_key;
  // Built as a hit's answer is: a KeyRecord moved into an optional.
  const std::optional<KeyRecord> built = kVerdict ? decoy.verdict_record() : decoy.record();
#if defined(__GNUC__)
  asm volatile("" : : "r"(&built), "r"(same) : "memory");  // the work is the point: keep it
#endif
  ++detail::decoy_reads();
  return std::nullopt;
}

std::optional<KeyRecord> MemoryStore::find(std::string_view public_key) {
  return impl_->find<false>(public_key);
}

std::optional<KeyRecord> MemoryStore::find_for_validation(std::string_view public_key) {
  return impl_->find<true>(public_key);
}

std::vector<KeyInfo> MemoryStore::list(const Uuid& account_id) {
  std::vector<const Entry*> entries;
  detail::SharedLock lock(impl_->mu);
  auto it = impl_->by_account.find(account_id);
  if (it == impl_->by_account.end()) return {};
  entries.reserve(it->second.size());
  for (Entry* entry : it->second) {
    entries.push_back(entry);
  }
  // The index orders equal creation times by key id; list() by insertion, latest first.
  const auto later_insert = [](const Entry* a, const Entry* b) { return a->seq > b->seq; };
  for (auto run = entries.begin(); run != entries.end();) {
    const std::int64_t created = (*run)->created_ms;
    const auto end =
        std::find_if(run, entries.end(), [&](const Entry* e) { return e->created_ms != created; });
    if (end - run > 1) std::sort(run, end, later_insert);
    run = end;
  }
  std::vector<KeyInfo> out;
  out.reserve(entries.size());
  for (const Entry* entry : entries) out.push_back(impl_->with_credits(entry->info()));
  return out;
}

std::optional<KeyInfo> MemoryStore::get(const Uuid& account_id, const Uuid& key_id) {
  detail::SharedLock lock(impl_->mu);
  const Entry* entry = impl_->owned_by(account_id, key_id);
  if (entry == nullptr) return std::nullopt;
  return impl_->with_credits(entry->info());
}

std::vector<KeyInfo> MemoryStore::list_page(const Uuid& account_id,
                                            const std::optional<PagePosition>& after,
                                            std::size_t limit, std::optional<KeyStatus> status) {
  std::vector<KeyInfo> page;
  if (limit == 0) return page;
  detail::SharedLock lock(impl_->mu);
  auto account = impl_->by_account.find(account_id);
  if (account == impl_->by_account.end()) return page;
  const AccountIndex& index = account->second;
  // The index is in page order, so the page starts at the first key strictly after the
  // position: upper_bound under std::greater.
  auto it = after ? index.upper_bound(OrderKey{after->created_at, after->key_id}) : index.begin();
  for (; it != index.end() && page.size() < limit; ++it) {
    if (status && (*it)->status != *status) continue;
    page.push_back(impl_->with_credits((*it)->info()));
  }
  return page;
}

std::optional<KeyInfo> MemoryStore::set_status(const Uuid& account_id, const Uuid& key_id,
                                               KeyStatus status) {
  detail::ExclusiveLock lock(impl_->mu);
  Entry* entry = impl_->owned_by(account_id, key_id);
  if (entry == nullptr) return std::nullopt;
  KeyInfo out = impl_->with_credits(entry->info());  // may throw: nothing changed yet
  if (entry->status != status) {
    out.status = status;
    ++out.version;
    entry->status = status;
    ++entry->version;
  }
  return out;
}

WriteResult MemoryStore::replace(const Uuid& account_id, const KeyInfo& next,
                                 std::uint64_t expected_version) {
  return impl_->replace(account_id, next, expected_version, nullptr);
}

WriteResult MemoryStore::replace_audited(const Uuid& account_id, const KeyInfo& next,
                                         std::uint64_t expected_version, const ChangeAudit& audit) {
  return impl_->replace(account_id, next, expected_version, &audit);
}

WriteResult MemoryStore::Impl::replace(const Uuid& account_id, const KeyInfo& next,
                                       std::uint64_t expected_version, const ChangeAudit* audit) {
  WriteResult result;
  detail::ExclusiveLock lock(mu);
  Entry* entry = owned_by(account_id, next.key_id);
  if (entry == nullptr) return result;  // not_found
  const KeyInfo info = entry->info();
  if (info.version != expected_version) {
    result.outcome = WriteOutcome::conflict;
    result.key = with_credits(info);
    return result;
  }
  const KeyInfo written = replaced(info, next);  // may throw: nothing changed yet
  EntryPtr packed = Entry::pack(written, entry->digest);
  result.key = with_credits(written);
  StagedAudit staged;
  if (audit != nullptr) {
    const KeyInfo before = with_credits(info);
    stage(staged, audit, &before, &result.key);
  }
  swap_in(entry, std::move(packed));
  commit(staged);
  result.outcome = WriteOutcome::applied;
  return result;
}

WriteResult MemoryStore::rotate(const Uuid& account_id, const KeyInfo& old_next,
                                std::uint64_t expected_version, const KeyRecord& successor) {
  return impl_->rotate(account_id, old_next, expected_version, successor, nullptr);
}

WriteResult MemoryStore::rotate_audited(const Uuid& account_id, const KeyInfo& old_next,
                                        std::uint64_t expected_version, const KeyRecord& successor,
                                        const ChangeAudit& audit) {
  return impl_->rotate(account_id, old_next, expected_version, successor, &audit);
}

WriteResult MemoryStore::Impl::rotate(const Uuid& account_id, const KeyInfo& old_next,
                                      std::uint64_t expected_version, const KeyRecord& successor,
                                      const ChangeAudit* audit) {
  EntryPtr added = new_entry(successor);  // allocates outside the lock
  WriteResult result;
  detail::ExclusiveLock lock(mu);
  Entry* entry = owned_by(account_id, old_next.key_id);
  if (entry == nullptr) return result;  // not_found
  const KeyInfo info = entry->info();
  if (info.version != expected_version) {
    result.outcome = WriteOutcome::conflict;
    result.key = with_credits(info);
    return result;
  }
  // Both or neither: every step that can throw (the copies, the events, then the
  // insert, which undoes itself) comes before the old key changes, which cannot throw.
  const KeyInfo written = replaced(info, old_next);
  EntryPtr packed = Entry::pack(written, entry->digest);
  result.key = with_credits(written);
  // The successor shares the lineage's credits, if any; it never creates them.
  added->set_credits(credits.count(added->lineage()) != 0);
  StagedAudit staged;
  if (audit != nullptr) {
    check_addable(*added);  // a refused rotate is not audited
    const KeyInfo before = with_credits(info);
    stage(staged, audit, &before, &result.key);
    const KeyInfo successor_after = with_credits(added->info());
    stage(staged, audit, nullptr, &successor_after);
  }
  add(std::move(added));
  swap_in(entry, std::move(packed));
  commit(staged);
  result.outcome = WriteOutcome::applied;
  return result;
}

std::vector<KeyInfo> MemoryStore::revoke_all(const Uuid& account_id, TimePoint at) {
  return impl_->revoke_all(account_id, at, nullptr);
}

std::vector<KeyInfo> MemoryStore::revoke_all_audited(const Uuid& account_id, TimePoint at,
                                                     const ChangeAudit& audit) {
  return impl_->revoke_all(account_id, at, &audit);
}

std::vector<KeyInfo> MemoryStore::Impl::revoke_all(const Uuid& account_id, TimePoint at,
                                                   const ChangeAudit* audit) {
  const TimePoint when = to_millis(at);
  std::vector<KeyInfo> revoked;
  detail::ExclusiveLock lock(mu);
  auto account = by_account.find(account_id);
  if (account == by_account.end()) return revoked;
  // Copies and events first (they may throw), then the changes, which cannot: all keys
  // or none.
  std::vector<Entry*> changing;
  for (Entry* entry : account->second) {
    if (entry->status != KeyStatus::revoked) changing.push_back(entry);
  }
  revoked.reserve(changing.size());
  StagedAudit staged;
  for (const Entry* entry : changing) {
    KeyInfo now = with_credits(entry->info());
    if (audit != nullptr) {
      const KeyInfo before = now;
      now.status = KeyStatus::revoked;
      now.updated_at = when;
      ++now.version;
      stage(staged, audit, &before, &now);
    } else {
      now.status = KeyStatus::revoked;
      now.updated_at = when;
      ++now.version;
    }
    revoked.push_back(std::move(now));
  }
  for (Entry* entry : changing) {
    entry->status = KeyStatus::revoked;
    entry->updated_ms = to_unix_millis(when);
    ++entry->version;
  }
  commit(staged);
  return revoked;
}

std::optional<KeyInfo> MemoryStore::remove(const Uuid& account_id, const Uuid& key_id) {
  return impl_->remove(account_id, key_id, nullptr);
}

std::optional<KeyInfo> MemoryStore::remove_audited(const Uuid& account_id, const Uuid& key_id,
                                                   const ChangeAudit& audit) {
  return impl_->remove(account_id, key_id, &audit);
}

std::optional<KeyInfo> MemoryStore::Impl::remove(const Uuid& account_id, const Uuid& key_id,
                                                 const ChangeAudit* audit) {
  detail::ExclusiveLock lock(mu);
  Entry* entry = owned_by(account_id, key_id);
  if (entry == nullptr) return std::nullopt;
  // The copy and the event first: nothing below throws.
  KeyInfo removed = with_credits(entry->info());
  StagedAudit staged;
  stage(staged, audit, &removed, nullptr);
  const Uuid lineage = removed.lineage();
  bool lineage_left = false;  // another key of the lineage stays
  for (Entry* other : by_account.find(account_id)->second) {
    if (other != entry && other->lineage() == lineage) lineage_left = true;
  }
  if (!lineage_left) credits.erase(lineage);

  by_public_key.erase(tag_of(removed.public_key), entry);
  auto account = by_account.find(account_id);
  account->second.erase(entry);
  if (account->second.empty()) by_account.erase(account);
  by_key_id.erase(key_id);
  // Last: frees the entry (the last one takes its place in `dense`).
  const std::size_t hole = entry->dense_index;
  dense.back()->dense_index = hole;
  std::swap(dense[hole], dense.back());
  dense.pop_back();
  by_public_key.shrink_for(dense.size());
  commit(staged);
  return removed;
}

void MemoryStore::record_last_use(const std::vector<LastUse>& uses) {
  detail::ExclusiveLock lock(impl_->mu);
  for (const LastUse& use : uses) {
    auto it = impl_->by_key_id.find(use.key_id);
    if (it == impl_->by_key_id.end()) continue;
    const std::int64_t at = to_unix_millis(use.at);
    Entry& entry = *it->second;
    if ((entry.flags & Entry::kUsed) == 0 || entry.used_ms < at) {
      entry.flags |= Entry::kUsed;
      entry.used_ms = at;
    }
  }
}

std::size_t MemoryStore::replace_digests(const std::vector<DigestChange>& changes) {
  return impl_->replace_digests(changes, nullptr);
}

std::size_t MemoryStore::replace_digests_audited(const std::vector<DigestChange>& changes,
                                                 const ChangeAudit& audit) {
  return impl_->replace_digests(changes, &audit);
}

std::size_t MemoryStore::Impl::replace_digests(const std::vector<DigestChange>& changes,
                                               const ChangeAudit* audit) {
  // With an audit, each rewrite is staged with its event and can be undone: an event
  // that throws puts back every digest the batch rewrote, so the batch is all or nothing.
  std::vector<std::pair<Digest*, Digest>> undo;
  if (audit != nullptr) undo.reserve(changes.size());  // before anything changes
  std::size_t rewritten = 0;
  StagedAudit staged;
  detail::ExclusiveLock lock(mu);
  try {
    for (const DigestChange& change : changes) {
      auto it = by_key_id.find(change.key_id);
      if (it == by_key_id.end()) continue;
      Digest& digest = it->second->digest;
      // A plain compare: `from` is a digest the caller read from this store.
      if (digest.pepper_id != change.from.pepper_id || digest.bytes != change.from.bytes) {
        continue;
      }
      if (audit != nullptr) {
        const KeyInfo key = with_credits(it->second->info());
        stage(staged, audit, &key, &key);
        undo.emplace_back(&digest, digest);  // reserved: cannot throw
      }
      digest = change.to;
      ++rewritten;
    }
  } catch (...) {
    for (auto u = undo.rbegin(); u != undo.rend(); ++u) *u->first = u->second;
    throw;
  }
  commit(staged);
  return rewritten;
}

std::vector<PepperCount> MemoryStore::pepper_counts() {
  std::map<std::uint32_t, std::uint64_t> counts;
  {
    detail::SharedLock lock(impl_->mu);
    for (const auto& entry : impl_->dense) ++counts[entry->digest.pepper_id];
  }
  std::vector<PepperCount> out;
  out.reserve(counts.size());
  for (const auto& [pepper_id, keys] : counts) out.push_back(PepperCount{pepper_id, keys});
  return out;
}

CreditTake MemoryStore::take_credits(const Uuid& lineage_id, std::uint64_t min, std::uint64_t max,
                                     TimePoint now) {
  return impl_->take_credits(lineage_id, min, max, now, nullptr);
}

CreditTake MemoryStore::take_credits_audited(const Uuid& lineage_id, std::uint64_t min,
                                             std::uint64_t max, TimePoint now,
                                             const ChangeAudit& audit) {
  return impl_->take_credits(lineage_id, min, max, now, &audit);
}

CreditTake MemoryStore::Impl::take_credits(const Uuid& lineage_id, std::uint64_t min,
                                           std::uint64_t max, TimePoint now,
                                           const ChangeAudit* audit) {
  CreditTake take;
  detail::ExclusiveLock lock(mu);
  auto it = credits.find(lineage_id);
  if (it == credits.end()) return take;  // no_credits
  Credits c = refilled(it->second.credits, now);
  // A refill comes due: its event (of the lineage's newest key, stored credits before,
  // refilled after) is built before anything changes.
  StagedAudit staged;
  if (audit != nullptr && c.refilled_period != it->second.credits.refilled_period) {
    if (const Entry* newest = newest_of_lineage(it->second, lineage_id)) {
      const KeyInfo before = with_credits(newest->info());
      KeyInfo after = before;
      after.credits = c;
      stage(staged, audit, &before, &after);
    }
  }
  take.period = c.refilled_period;
  take.generation = it->second.generation;
  if (c.refill) take.period_end = refill_period_start(c.refill->interval, c.refilled_period + 1);
  if (c.remaining < min) {
    take.outcome = CreditTake::Outcome::insufficient;
  } else {
    take.outcome = CreditTake::Outcome::taken;
    take.taken = std::min(c.remaining, std::max(min, max));
    c.remaining -= take.taken;
  }
  take.remaining = c.remaining;
  it->second.credits = c;  // the refill is written either way, once per period
  commit(staged);
  return take;
}

void MemoryStore::return_credits(const Uuid& lineage_id, std::uint64_t n, std::int64_t period) {
  impl_->return_credits(lineage_id, n, period, nullptr);
}

void MemoryStore::return_credits_checked(const Uuid& lineage_id, std::uint64_t n,
                                         std::int64_t period, std::uint64_t generation) {
  impl_->return_credits(lineage_id, n, period, &generation);
}

void MemoryStore::Impl::return_credits(const Uuid& lineage_id, std::uint64_t n, std::int64_t period,
                                       const std::uint64_t* generation) {
  detail::ExclusiveLock lock(mu);
  auto it = credits.find(lineage_id);
  if (it == credits.end() || it->second.credits.refilled_period != period) return;
  if (generation != nullptr && it->second.generation != *generation) return;
  Credits& c = it->second.credits;
  c.remaining = std::min(c.remaining + std::min(n, KeyPolicyLimits::kMaxCredits),
                         KeyPolicyLimits::kMaxCredits);
}

std::optional<KeyInfo> MemoryStore::change_credits(const Uuid& account_id, const Uuid& key_id,
                                                   const CreditsChange& change) {
  return impl_->change_credits(account_id, key_id, change, nullptr);
}

std::optional<KeyInfo> MemoryStore::change_credits_audited(const Uuid& account_id,
                                                           const Uuid& key_id,
                                                           const CreditsChange& change,
                                                           const ChangeAudit& audit) {
  return impl_->change_credits(account_id, key_id, change, &audit);
}

std::optional<KeyInfo> MemoryStore::Impl::change_credits(const Uuid& account_id, const Uuid& key_id,
                                                         const CreditsChange& change,
                                                         const ChangeAudit* audit) {
  detail::ExclusiveLock lock(mu);
  Entry* entry = owned_by(account_id, key_id);
  if (entry == nullptr) return std::nullopt;
  const Uuid lineage = entry->lineage();
  auto it = credits.find(lineage);
  // The key as it will be, and its event, first (they may throw); then the change.
  KeyInfo before = with_credits(entry->info());
  KeyInfo after = before;
  switch (change.op) {
    case CreditsOp::remove: after.credits.reset(); break;
    case CreditsOp::add: {
      if (it == credits.end()) {
        throw Error(ErrorCode::conflict, "the key has no credits to add to");
      }
      Credits c = refilled(it->second.credits, change.at);
      c.remaining = detail::add_clamped(c.remaining, change.delta);
      after.credits = c;
      break;
    }
    case CreditsOp::configure: {
      if (it == credits.end() && !change.remaining) {
        throw Error(ErrorCode::conflict, "the key has no credits: give a balance");
      }
      const Credits c = it == credits.end() ? Credits{} : refilled(it->second.credits, change.at);
      after.credits = detail::configured(c, change);
      break;
    }
  }
  StagedAudit staged;
  stage(staged, audit, &before, &after);
  // A balance set (CreditsOp::configure) gets a generation never used before, in any
  // lineage: credits taken before it are not given back onto it.
  const std::uint64_t generation = change.op == CreditsOp::configure ? ++last_generation
                                   : it != credits.end()             ? it->second.generation
                                                                     : 0;
  if (!after.credits) {
    if (it != credits.end()) credits.erase(it);
    mark_lineage(account_id, lineage, false);
  } else if (it == credits.end()) {
    credits.emplace(lineage, LineageCredits{*after.credits, account_id, generation});  // may throw
    mark_lineage(account_id, lineage, true);
  } else {
    it->second.credits = *after.credits;
    it->second.generation = generation;
  }
  commit(staged);
  return after;
}

std::vector<AuditEvent> MemoryStore::audit_events(const Uuid& account_id, const AuditRange& range) {
  std::vector<AuditEvent> out;
  if (range.limit == 0) return out;
  detail::SharedLock lock(impl_->mu);
  // The account's events are one run of the log, newest first: start at its beginning
  // (the greatest possible time and id sort first), or just after the position.
  std::array<std::uint8_t, 16> greatest{};
  greatest.fill(0xff);
  auto it =
      range.after
          ? impl_->audit_log.upper_bound(
                AuditKey{account_id, range.after->time, range.after->event_id})
          : impl_->audit_log.lower_bound(AuditKey{account_id, TimePoint::max(), Uuid(greatest)});
  for (; it != impl_->audit_log.end() && out.size() < range.limit; ++it) {
    const AuditEvent& event = it->second;
    if (it->first.account_id != account_id) break;
    if (range.since && event.time < *range.since) break;  // the rest are older still
    if (range.key_id && event.key_id != *range.key_id) continue;
    out.push_back(event);
  }
  return out;
}

std::uint64_t MemoryStore::prune_audit(TimePoint before) {
  std::uint64_t pruned = 0;
  detail::ExclusiveLock lock(impl_->mu);
  while (!impl_->audit_age.empty() && impl_->audit_age.begin()->first.first < before) {
    impl_->erase_event(impl_->audit_age.begin());
    ++pruned;
  }
  return pruned;
}

std::size_t MemoryStore::size() const {
  detail::SharedLock lock(impl_->mu);
  return impl_->dense.size();
}

std::size_t MemoryStore::audit_size() const {
  detail::SharedLock lock(impl_->mu);
  return impl_->audit_age.size();
}

}  // namespace apikeys
