#include "apikeys/key_manager.hpp"

#include <openssl/crypto.h>

#include <algorithm>
#include <cstring>
#include <exception>
#include <functional>
#include <limits>

#include "apikeys/error.hpp"
#include "apikeys/limiter.hpp"
#include "audit_json.hpp"
#include "cache_registry.hpp"
#include "guarded.hpp"
#include "hex.hpp"
#include "key_import.hpp"
#include "metadata.hpp"
#include "observer_list.hpp"
#include "scope.hpp"
#include "system_audit.hpp"
#include "text.hpp"

namespace apikeys {

namespace {

using detail::guarded;

// Error messages name the rule that was broken, never the submitted value: a caller
// who pastes a secret into a title must not find it echoed into logs.
[[noreturn]] void refuse(const char* rule) { throw Error(ErrorCode::invalid_argument, rule); }

// The rules of one text field, with the message for each.
struct TextRules {
  std::size_t max_code_points;
  std::string_view allowed_controls;
  const char* not_utf8;
  const char* too_long;
  const char* control;
  const char* bidi_or_zero_width;
};

// Bidirectional formatting and zero-width characters are invisible but reorder or join
// what surrounds them, so a dashboard could show one key's title as another's.
constexpr TextRules kTitleRules{
    KeyManager::kMaxTitleCodePoints,
    {},
    "title must be valid UTF-8",
    "title must be at most 255 characters",
    "title must not contain control characters",
    "title must not contain bidirectional formatting or zero-width characters"};
constexpr TextRules kDescriptionRules{
    KeyManager::kMaxDescriptionCodePoints,
    "\t\n\r",
    "description must be valid UTF-8",
    "description must be at most 1024 characters",
    "description must not contain control characters other than tab and newline",
    "description must not contain bidirectional formatting or zero-width characters"};

void check_text(std::string_view text, const TextRules& rules) {
  // Four bytes per code point at most: anything larger is too long without decoding it.
  if (text.size() > rules.max_code_points * 4) refuse(rules.too_long);
  const auto n = detail::utf8_length(text, std::numeric_limits<std::size_t>::max());
  if (!n) refuse(rules.not_utf8);
  if (*n > rules.max_code_points) refuse(rules.too_long);
  if (detail::has_control(text, rules.allowed_controls)) refuse(rules.control);
  if (detail::has_bidi_or_zero_width(text)) refuse(rules.bidi_or_zero_width);
}

// One text field of a ChangeContext: at most `max_bytes` bytes of UTF-8 without
// control characters. The messages name the field, never its value.
void check_context_text(std::string_view text, std::size_t max_bytes, const char* too_long,
                        const char* not_utf8, const char* control) {
  if (text.size() > max_bytes) refuse(too_long);
  if (!detail::utf8_length(text, max_bytes)) refuse(not_utf8);
  if (detail::has_control(text, {}) || detail::has_bidi_or_zero_width(text) ||
      detail::has_line_separator(text)) {
    refuse(control);
  }
}

}  // namespace

// Checked before anything is read or written: an audit trail must not be given text
// that could forge or hide its own lines.
void check_change_context(const ChangeContext& context) {
  if (static_cast<std::uint8_t>(context.actor.type) > static_cast<std::uint8_t>(kLastActorType)) {
    refuse("actor type must be user, service or system");
  }
  static_assert(Actor::kMaxActorIdLength == 256 && Actor::kMaxActorDetailLength == 1024 &&
                    ChangeContext::kMaxReasonLength == 1024,
                "the messages below state the limits");
  check_context_text(context.actor.id, Actor::kMaxActorIdLength,
                     "actor id must be at most 256 bytes", "actor id must be valid UTF-8",
                     "actor id must not contain control, invisible or line-breaking characters");
  check_context_text(
      context.actor.detail, Actor::kMaxActorDetailLength, "actor detail must be at most 1024 bytes",
      "actor detail must be valid UTF-8",
      "actor detail must not contain control, invisible or line-breaking characters");
  check_context_text(context.reason, ChangeContext::kMaxReasonLength,
                     "reason must be at most 1024 bytes", "reason must be valid UTF-8",
                     "reason must not contain control, invisible or line-breaking characters");
}

namespace {

// Runs `step`, which follows a committed change (erasing the caches), then `report`,
// which runs even when `step` throws, before the exception goes on: the change stands
// either way, so it is reported either way.
template <class Step, class Report>
void then_report(const Step& step, const Report& report) {
  try {
    step();
  } catch (...) {
    report();
    throw;
  }
  report();
}

// The fields each kind of change may touch (audit_json.hpp).
namespace key_field = detail::key_field;
constexpr detail::KeyFields kStatusFields =
    key_field::kStatus | key_field::kUpdatedAt | key_field::kVersion;
constexpr detail::KeyFields kUpdateFields =
    key_field::kTitle | key_field::kDescription | key_field::kMetadata | key_field::kScopes |
    key_field::kExpiresAt | key_field::kRateLimits | key_field::kUpdatedAt | key_field::kVersion;
constexpr detail::KeyFields kRotateFields =
    key_field::kExpiresAt | key_field::kRotatedTo | key_field::kUpdatedAt | key_field::kVersion;

// `info` with its credits' refills due at `at` applied, as get() and list() show it.
KeyInfo shown_at(KeyInfo info, TimePoint at) {
  if (info.credits) info.credits = refilled(*info.credits, at);
  return info;
}

// The audit events of one management call (ChangeAudit). A key the call changes gets
// an `action` event with the fields `always`, and those of `candidates` whose values
// differ (none when that is no field); a key it creates, a `created` event with every
// field after; a key it deletes, a `remove` event with every field before. Credits are
// shown as get() shows them at the event's time. Keeps the events it built, one per key
// (a store that retried its transaction built the first ones again), for the observers.
class EventBuilder final : public ChangeAudit {
 public:
  EventBuilder(const Clock& clock, AuditAction action, const ChangeContext& context,
               detail::KeyFields candidates, detail::KeyFields always,
               AuditAction created = AuditAction::create)
      : clock_(clock),
        action_(action),
        created_(created),
        context_(context),
        candidates_(candidates),
        always_(always) {}

  std::optional<AuditEvent> event(const KeyInfo* before, const KeyInfo* after) const override {
    const TimePoint at = clock_.now();
    AuditEvent e;
    if (before == nullptr && after == nullptr) {
      return std::nullopt;
    } else if (before == nullptr) {
      e.account_id = after->account_id;
      e.key_id = after->key_id;
      e.action = created_;
      e.before = "{}";
      e.after = detail::key_json(shown_at(*after, at), key_field::kAll);
    } else if (after == nullptr) {
      e.account_id = before->account_id;
      e.key_id = before->key_id;
      e.action = AuditAction::remove;
      e.before = detail::key_json(shown_at(*before, at), key_field::kAll);
      e.after = "{}";
    } else {
      e.account_id = after->account_id;
      e.key_id = after->key_id;
      const KeyInfo was = shown_at(*before, at);
      const KeyInfo is = shown_at(*after, at);
      const detail::KeyFields fields = always_ | detail::changed_fields(was, is, candidates_);
      if (fields == 0) {
        forget(after->key_id);
        return std::nullopt;
      }
      e.action = action_;
      e.before = detail::key_json(was, fields);
      e.after = detail::key_json(is, fields);
    }
    e.time = from_unix_millis(to_unix_millis(at));
    e.event_id = detail::audit_event_id(e.time);
    e.context = context_;
    keep(e);
    return e;
  }

  // An event made without a store's help (keep() it); see KeyManager::revoke_all().
  void keep(const AuditEvent& e) const {
    forget(e.key_id);
    built_.push_back(e);
  }

  // The events built since the last take(), in the order built.
  std::vector<AuditEvent> take() const noexcept { return std::exchange(built_, {}); }

 private:
  void forget(const Uuid& key_id) const {
    built_.erase(std::remove_if(built_.begin(), built_.end(),
                                [&](const AuditEvent& b) { return b.key_id == key_id; }),
                 built_.end());
  }

  const Clock& clock_;
  const AuditAction action_;
  const AuditAction created_;
  const ChangeContext& context_;
  const detail::KeyFields candidates_;
  const detail::KeyFields always_;
  mutable std::vector<AuditEvent> built_;
};

}  // namespace

CreateRequest normalize_request(const CreateRequest& request) {
  CreateRequest out;
  const std::string_view title = detail::trim_ascii(request.title);
  if (title.empty()) refuse("title must not be empty or blank");
  check_text(title, kTitleRules);
  check_text(request.description, kDescriptionRules);
  if (request.expires_in_days &&
      (*request.expires_in_days < 1 || *request.expires_in_days > KeyManager::kMaxExpiryDays)) {
    refuse("expires_in_days must be between 1 and 365");
  }
  detail::check_metadata(request.metadata);
  out.title.assign(title);
  out.description = request.description;
  out.expires_in_days = request.expires_in_days;
  out.metadata = request.metadata;
  out.scopes = detail::normalize_scopes(request.scopes);
  out.rate_limits = normalize_rate_limits(request.rate_limits);
  if (request.credits) {
    check_credits(*request.credits);
    out.credits = request.credits;
  }
  return out;
}

struct KeyManager::Impl {
  std::shared_ptr<Store> store;
  std::shared_ptr<Hasher> hasher;
  std::shared_ptr<KeyGenerator> generator;
  std::shared_ptr<Clock> clock;
  KeyFormat format;
  // options.validation.observers, told of every change (the Validator has its own list
  // of the same observers for its events).
  detail::ObserverList observers;
  Validator validator;

  // By value: its members are moved from below (cppcheck does not see member moves).
  // cppcheck-suppress passedByValue
  Impl(std::shared_ptr<Store> s, std::shared_ptr<Hasher> h, KeyManagerOptions o)
      : store(s),
        hasher(h),
        generator(o.generator ? std::move(o.generator) : std::make_shared<CsprngKeyGenerator>()),
        clock(o.validation.clock ? o.validation.clock : system_clock()),
        format(o.validation.format),
        observers(o.validation.observers),
        validator(std::move(s), std::move(h), std::move(o.validation)) {}

  // Now, truncated to the milliseconds stores keep, so what we return equals what is
  // stored.
  TimePoint now() const { return from_unix_millis(to_unix_millis(clock->now())); }

  // Read, change, compare-and-set: see change().
  template <class Mutate>
  KeyInfo change(const char* operation, const Uuid& account_id, const Uuid& key_id,
                 std::optional<std::uint64_t> expected_version, Mutate&& mutate,
                 const EventBuilder& audit, bool* applied = nullptr,
                 std::exception_ptr* erase_failure = nullptr);

  // An EventBuilder for one call of this manager.
  EventBuilder audit(AuditAction action, const ChangeContext& context, detail::KeyFields candidates,
                     detail::KeyFields always = 0,
                     AuditAction created = AuditAction::create) const {
    return EventBuilder(*clock, action, context, candidates, always, created);
  }

  // Tells the observers of a committed change: the events the store wrote with it, or,
  // for a store without an audit trail, those `fallback()` builds with `audit` from what
  // the call knows. Never throws: the change stands, and an event that cannot be built
  // (no memory, a failing CSPRNG) is left out rather than made the caller's failure.
  template <class Fallback>
  void publish(const EventBuilder& audit, Fallback&& fallback) const noexcept {
    try {
      std::vector<AuditEvent> events = audit.take();
      if (observers.empty()) return;
      if (!store->keeps_audit()) {
        fallback();
        events = audit.take();
      }
      for (const AuditEvent& e : events) observers.change(e);
    } catch (...) {
    }
  }

  // publish() for a change of a key known before it (read_before()) only when the
  // store keeps no audit trail and there are observers.
  void publish_change(const EventBuilder& audit, const std::optional<KeyInfo>& before,
                      const KeyInfo& after) const noexcept {
    publish(audit, [&] {
      if (before) (void)audit.event(&*before, &after);
    });
  }

  // Tells the observers of the library's own changes a store call made (a refill): the
  // events its ChangeAudit built, with no fallback (system_audit.hpp). Never throws.
  void publish_system(const std::vector<AuditEvent>& events) const noexcept {
    if (observers.empty()) return;
    for (const AuditEvent& e : events) observers.change(e);
  }

  // publish() for a change of one key from `before` to `after` (nullptr: none).
  void publish(const EventBuilder& audit, const KeyInfo* before,
               const KeyInfo* after) const noexcept {
    publish(audit, [&] { (void)audit.event(before, after); });
  }

  // The key as it is before a change, for its event: read only when there are observers
  // and the store keeps no audit trail (nullopt otherwise, and when the account has no
  // such key).
  std::optional<KeyInfo> read_before(const Uuid& account_id, const Uuid& key_id) const;

  // A fresh key pair of this manager's format and its record (not yet stored).
  KeyRecord new_record(const Uuid& account_id, SecretString& secret);

  // The key's lineage's credits changed: drop what this process's limiter holds in
  // advance (when `drop_lease`: the balance or the refill was set), and the verdicts of
  // every key of the lineage (whether it has credits is part of a verdict). Walks the
  // rotation links both ways from `key`.
  void credits_changed(const Uuid& account_id, const KeyInfo& key, bool drop_lease);

  // `info` with its credits' refills due by now applied, as get() and list() show it.
  KeyInfo shown(KeyInfo info) const { return shown_at(std::move(info), clock->now()); }

  std::string cursor_for(const Uuid& account_id, std::optional<KeyStatus> status,
                         const KeyInfo& last) const;
  std::string audit_cursor_for(const Uuid& account_id, const AuditQuery& query,
                               const AuditEvent& last) const;
  AuditPosition audit_position_of(const Uuid& account_id, const AuditQuery& query) const;
  PagePosition position_of(const Uuid& account_id, std::optional<KeyStatus> status,
                           std::string_view cursor) const;
};

namespace {

// A change made without an expected version retries this many times when other
// writers keep changing the key between our read and our write.
constexpr int kMaxChangeAttempts = 16;

[[noreturn]] void no_such_key(const Uuid& key_id) {
  throw Error(ErrorCode::not_found, "no key " + key_id.to_string() + " for this account");
}

}  // namespace

// Reads the key, lets `mutate` change a copy (it returns false for "nothing to do", and
// may throw to refuse), and writes it back with Store::replace() only if nobody changed
// the key since the read, with its `audit` event. Then erases the key's verdicts from
// every cache over this store in the process, so no validation answers from the old
// state once this returns (doc/key-policy.md, "Every change is as strong as a
// revocation"), and publishes the event, even when a cache fails to erase (before that
// is thrown): the change stands. Sets `*applied` (when given) once the write is applied.
// With `erase_failure`, a cache that fails to erase is not thrown but kept there, for a
// caller with a second write to make first (update(): the credits).
template <class Mutate>
KeyInfo KeyManager::Impl::change(const char* operation, const Uuid& account_id, const Uuid& key_id,
                                 std::optional<std::uint64_t> expected_version, Mutate&& mutate,
                                 const EventBuilder& audit, bool* applied,
                                 std::exception_ptr* erase_failure) {
  const auto erase = [&](const std::string& public_key) {
    if (erase_failure == nullptr) {
      detail::erase_everywhere(store->identity(), public_key);
      return;
    }
    try {
      detail::erase_everywhere(store->identity(), public_key);
    } catch (...) {
      *erase_failure = std::current_exception();
    }
  };
  for (int attempt = 0; attempt < kMaxChangeAttempts; ++attempt) {
    (void)audit.take();  // an attempt that did not commit leaves no event
    std::optional<KeyInfo> current =
        guarded(operation, [&] { return store->get(account_id, key_id); });
    if (!current || current->account_id != account_id) no_such_key(key_id);
    if (expected_version && current->version != *expected_version) {
      throw Error(ErrorCode::conflict, "the key's version is not the expected one");
    }
    KeyInfo next = *current;
    if (!mutate(next)) {
      // Nothing to write, perhaps because an earlier call wrote it and then failed
      // (a lost reply, a cache it could not erase): erase anyway, so a retry keeps the
      // guarantee the failed call could not.
      erase(current->public_key);
      return std::move(*current);
    }
    next.updated_at = now();
    WriteResult written = guarded(operation, [&] {
      return store->replace_audited(account_id, next, current->version, audit);
    });
    switch (written.outcome) {
      case WriteOutcome::applied:
        if (applied != nullptr) *applied = true;
        then_report([&] { erase(written.key.public_key); },
                    [&] { publish(audit, &*current, &written.key); });
        return std::move(written.key);
      case WriteOutcome::not_found: no_such_key(key_id);
      case WriteOutcome::conflict:
        if (expected_version) {
          throw Error(ErrorCode::conflict, "the key's version is not the expected one");
        }
        continue;  // someone else changed it: read it again
    }
  }
  throw Error(ErrorCode::busy, std::string(operation) + ": the key kept changing; try again");
}

KeyRecord KeyManager::Impl::new_record(const Uuid& account_id, SecretString& secret) {
  KeyPair pair = generator->generate(format);
  if (!format.is_public_key(pair.public_key) || !format.is_secret_key(pair.secret_key.reveal())) {
    throw Error(ErrorCode::crypto, "the key generator produced keys of the wrong format");
  }
  KeyRecord record;
  record.info.key_id = Uuid::random();
  record.info.account_id = account_id;
  record.info.public_key = std::move(pair.public_key);
  record.info.status = KeyStatus::active;
  record.info.created_at = now();
  record.info.updated_at = record.info.created_at;
  record.info.version = 1;
  record.digest = hasher->hash(pair.secret_key.reveal());
  secret = std::move(pair.secret_key);
  return record;
}

namespace {

// A list cursor: what it binds, then an HMAC under the current pepper over the account
// and those bytes, so a cursor altered, or made for another account or status filter,
// is refused (doc/key-policy.md, "Pages").
//   version (1) | status filter (1; 0xFF: none) | created_at ms (8, big-endian) |
//   key id (16) | pepper id (4, big-endian) | tag (32)
constexpr std::uint8_t kCursorVersion = 1;
constexpr std::size_t kCursorBody = 1 + 1 + 8 + 16;
constexpr std::size_t kCursorBytes = kCursorBody + 4 + 32;
constexpr char kCursorDomain[] = "apikeys list cursor v1";

std::string cursor_mac_input(const Uuid& account_id, const std::uint8_t* body) {
  std::string in(kCursorDomain, sizeof kCursorDomain);  // the NUL included: a separator
  in.append(reinterpret_cast<const char*>(account_id.bytes().data()), 16);
  in.append(reinterpret_cast<const char*>(body), kCursorBody);
  return in;
}

void put_be(std::uint8_t* out, std::uint64_t v, int n) {
  for (int i = n - 1; i >= 0; --i) {
    out[i] = static_cast<std::uint8_t>(v & 0xFF);
    v >>= 8;
  }
}
std::uint64_t get_be(const std::uint8_t* in, int n) {
  std::uint64_t v = 0;
  for (int i = 0; i < n; ++i) v = (v << 8) | in[i];
  return v;
}

}  // namespace

std::string KeyManager::Impl::cursor_for(const Uuid& account_id, std::optional<KeyStatus> status,
                                         const KeyInfo& last) const {
  std::uint8_t bytes[kCursorBytes] = {};
  bytes[0] = kCursorVersion;
  bytes[1] = status ? static_cast<std::uint8_t>(*status) : 0xFF;
  put_be(bytes + 2, static_cast<std::uint64_t>(to_unix_millis(last.created_at)), 8);
  std::memcpy(bytes + 10, last.key_id.bytes().data(), 16);
  const Digest tag = hasher->hash(cursor_mac_input(account_id, bytes));
  put_be(bytes + kCursorBody, tag.pepper_id, 4);
  std::memcpy(bytes + kCursorBody + 4, tag.bytes.data(), 32);
  return detail::hex_encode(std::string_view(reinterpret_cast<const char*>(bytes), kCursorBytes));
}

PagePosition KeyManager::Impl::position_of(const Uuid& account_id, std::optional<KeyStatus> status,
                                           std::string_view cursor) const {
  constexpr const char* kBad =
      "cursor is not one this account's listing returned (with the same status filter)";
  std::uint8_t bytes[kCursorBytes] = {};
  if (cursor.size() != 2 * kCursorBytes || !detail::hex_decode(cursor, bytes) ||
      bytes[0] != kCursorVersion) {
    refuse(kBad);
  }
  Digest tag;
  tag.pepper_id = static_cast<std::uint32_t>(get_be(bytes + kCursorBody, 4));
  std::memcpy(tag.bytes.data(), bytes + kCursorBody + 4, 32);
  // cursor_for() tags under the current pepper, so a tag under the legacy pepper (which
  // only verifies imported keys, and may be short) was never made here.
  if (tag.pepper_id == kLegacyPepperId ||
      !hasher->verify(cursor_mac_input(account_id, bytes), tag)) {
    refuse(kBad);
  }
  const std::uint8_t want = status ? static_cast<std::uint8_t>(*status) : 0xFF;
  if (bytes[1] != want) refuse(kBad);
  PagePosition position;
  position.created_at = from_unix_millis(static_cast<std::int64_t>(get_be(bytes + 2, 8)));
  std::array<std::uint8_t, 16> id{};
  std::memcpy(id.data(), bytes + 10, 16);
  position.key_id = Uuid(id);
  return position;
}

namespace {

// An audit cursor: the position, then an HMAC under the current pepper over the
// account, the query's filters (key and since) and the position, so a cursor altered,
// or made for another account or filter, is refused.
//   version (1) | time ms (8, big-endian) | event id (16) | pepper id (4) | tag (32)
constexpr std::uint8_t kAuditCursorVersion = 1;
constexpr std::size_t kAuditCursorBody = 1 + 8 + 16;
constexpr std::size_t kAuditCursorBytes = kAuditCursorBody + 4 + 32;
constexpr char kAuditCursorDomain[] = "apikeys audit cursor v1";

std::string audit_cursor_mac_input(const Uuid& account_id, const AuditQuery& query,
                                   const std::uint8_t* body) {
  std::string in(kAuditCursorDomain, sizeof kAuditCursorDomain);  // NUL: a separator
  in.append(reinterpret_cast<const char*>(account_id.bytes().data()), 16);
  std::uint8_t filters[1 + 16 + 1 + 8] = {};
  if (query.key_id) {
    filters[0] = 1;
    std::memcpy(filters + 1, query.key_id->bytes().data(), 16);
  }
  if (query.since) {
    filters[17] = 1;
    put_be(filters + 18, static_cast<std::uint64_t>(to_unix_millis(*query.since)), 8);
  }
  in.append(reinterpret_cast<const char*>(filters), sizeof filters);
  in.append(reinterpret_cast<const char*>(body), kAuditCursorBody);
  return in;
}

}  // namespace

std::string KeyManager::Impl::audit_cursor_for(const Uuid& account_id, const AuditQuery& query,
                                               const AuditEvent& last) const {
  std::uint8_t bytes[kAuditCursorBytes] = {};
  bytes[0] = kAuditCursorVersion;
  put_be(bytes + 1, static_cast<std::uint64_t>(to_unix_millis(last.time)), 8);
  std::memcpy(bytes + 9, last.event_id.bytes().data(), 16);
  const Digest tag = hasher->hash(audit_cursor_mac_input(account_id, query, bytes));
  put_be(bytes + kAuditCursorBody, tag.pepper_id, 4);
  std::memcpy(bytes + kAuditCursorBody + 4, tag.bytes.data(), 32);
  return detail::hex_encode(
      std::string_view(reinterpret_cast<const char*>(bytes), kAuditCursorBytes));
}

AuditPosition KeyManager::Impl::audit_position_of(const Uuid& account_id,
                                                  const AuditQuery& query) const {
  constexpr const char* kBad =
      "cursor is not one this account's audit query returned (with the same key and since)";
  std::uint8_t bytes[kAuditCursorBytes] = {};
  if (query.cursor.size() != 2 * kAuditCursorBytes || !detail::hex_decode(query.cursor, bytes) ||
      bytes[0] != kAuditCursorVersion) {
    refuse(kBad);
  }
  Digest tag;
  tag.pepper_id = static_cast<std::uint32_t>(get_be(bytes + kAuditCursorBody, 4));
  std::memcpy(tag.bytes.data(), bytes + kAuditCursorBody + 4, 32);
  if (tag.pepper_id == kLegacyPepperId ||
      !hasher->verify(audit_cursor_mac_input(account_id, query, bytes), tag)) {
    refuse(kBad);
  }
  AuditPosition position;
  position.time = from_unix_millis(static_cast<std::int64_t>(get_be(bytes + 1, 8)));
  std::array<std::uint8_t, 16> id{};
  std::memcpy(id.data(), bytes + 9, 16);
  position.event_id = Uuid(id);
  return position;
}

AuditPage KeyManager::audit(const Uuid& account_id, const AuditQuery& query) {
  if (query.limit > AuditQuery::kMaxLimit) refuse("limit must be at most 1000");
  const std::size_t limit = query.limit == 0 ? AuditQuery::kDefaultLimit : query.limit;
  AuditRange range;
  range.key_id = query.key_id;
  range.since = query.since;
  if (!query.cursor.empty()) range.after = impl_->audit_position_of(account_id, query);
  range.limit = limit + 1;  // one more tells whether there is a next page
  AuditPage page;
  page.events = guarded("reading the audit trail",
                        [&] { return impl_->store->audit_events(account_id, range); });
  // Only the account's, whatever a user's store returns.
  page.events.erase(std::remove_if(page.events.begin(), page.events.end(),
                                   [&](const AuditEvent& e) { return e.account_id != account_id; }),
                    page.events.end());
  if (page.events.size() > limit) {
    page.events.resize(limit);
    page.next_cursor = impl_->audit_cursor_for(account_id, query, page.events.back());
  }
  return page;
}

std::uint64_t KeyManager::prune_audit(TimePoint before) {
  return guarded("pruning the audit trail", [&] { return impl_->store->prune_audit(before); });
}

KeyManager::KeyManager(std::shared_ptr<Store> store, std::shared_ptr<Hasher> hasher,
                       KeyManagerOptions options) {
  if (!store) throw Error(ErrorCode::invalid_argument, "a KeyManager needs a Store");
  if (!hasher) throw Error(ErrorCode::invalid_argument, "a KeyManager needs a Hasher");
  impl_ = std::make_unique<Impl>(std::move(store), std::move(hasher), std::move(options));
}

KeyManager::~KeyManager() = default;

CreatedKey KeyManager::create(const Uuid& account_id, const CreateRequest& request,
                              const ChangeContext& context) {
  check_change_context(context);
  if (account_id.is_nil()) refuse("account id must not be the nil UUID");
  CreateRequest req = normalize_request(request);

  SecretString secret;
  KeyRecord record = impl_->new_record(account_id, secret);
  KeyInfo& info = record.info;
  info.title = std::move(req.title);
  info.description = std::move(req.description);
  if (req.expires_in_days)
    info.expires_at = info.created_at + std::chrono::hours(24 * *req.expires_in_days);
  info.metadata = std::move(req.metadata);
  info.scopes = std::move(req.scopes);
  info.lineage_id = info.key_id;  // a lineage of its own
  info.rate_limits = std::move(req.rate_limits);
  if (req.credits) {
    Credits c = *req.credits;
    c.refilled_period = c.refill ? refill_period(c.refill->interval, info.created_at) : 0;
    info.credits = c;
  }

  const EventBuilder audit = impl_->audit(AuditAction::create, context, 0);
  guarded("storing the key", [&] { impl_->store->insert_audited(record, audit); });
  std::vector<AuditEvent> refill_events;  // published after the key's own event
  if (!info.rate_limits.empty() || info.credits) {
    // A store written before rate limits and credits existed drops them silently: read
    // the key back, and take it away again rather than leave a key without its limits.
    // The removal is audited like any other, so the trail never keeps a `create` event
    // for a key that is gone; observers see both.
    const auto take_back = [&] {
      try {
        const EventBuilder removal = impl_->audit(AuditAction::remove, context, 0);
        if (impl_->store->remove_audited(account_id, info.key_id, removal)) {
          impl_->publish(audit, nullptr, &info);
          impl_->publish(removal, &info, nullptr);
        }
      } catch (...) {
      }
    };
    std::optional<KeyInfo> stored;
    try {
      stored = impl_->store->get(account_id, info.key_id);
    } catch (...) {
    }
    bool kept = stored && stored->rate_limits == info.rate_limits &&
                stored->credits.has_value() == info.credits.has_value() &&
                stored->lineage() == info.key_id;
    if (kept && info.credits) {
      // A store that keeps whole records but cannot charge credits (an older user
      // store) would fail every admission of this key: ask it for the balance, which
      // charges nothing (but writes a refill that came due since created_at, which is
      // audited as the library's own change).
      std::exception_ptr failure;
      const TimePoint asked = impl_->clock->now();
      const detail::RefillAudit refills(asked);
      try {
        kept = impl_->store->take_credits_audited(info.key_id, 0, 0, asked, refills).outcome ==
               CreditTake::Outcome::taken;
        refills.committed();
        refill_events = refills.take();
      } catch (const Error& e) {
        kept = false;
        if (e.code() != ErrorCode::not_supported) failure = std::current_exception();
      } catch (...) {
        kept = false;
        failure = std::current_exception();
      }
      if (failure) {
        // Could not tell (busy, storage): no key is left behind without its credits.
        take_back();
        std::rethrow_exception(failure);
      }
    }
    if (!kept) {
      take_back();
      throw Error(ErrorCode::not_supported, "this store does not keep rate limits or credits");
    }
  }
  // A verdict cached for this public key before it existed (only possible with a
  // predictable generator) must not outlive its creation. Best effort: the key is
  // committed, and throwing now would lose its only copy of the secret; a stale entry
  // could only be a negative verdict (fail closed), gone within its TTL.
  try {
    detail::erase_everywhere(impl_->store->identity(), info.public_key);
  } catch (...) {
  }
  impl_->publish(audit, nullptr, &info);
  impl_->publish_system(refill_events);
  return CreatedKey{std::move(record.info), std::move(secret)};
}

std::vector<KeyInfo> KeyManager::list(const Uuid& account_id) {
  std::vector<KeyInfo> keys =
      guarded("listing keys", [&] { return impl_->store->list(account_id); });
  for (KeyInfo& k : keys) k = impl_->shown(std::move(k));
  return keys;
}

KeyPage KeyManager::list(const Uuid& account_id, const ListOptions& options) {
  const std::size_t limit = options.limit == 0 ? ListOptions::kDefaultLimit : options.limit;
  if (limit > ListOptions::kMaxLimit) refuse("limit must be between 1 and 1000");
  std::optional<PagePosition> after;
  if (!options.cursor.empty()) {
    after = impl_->position_of(account_id, options.status, options.cursor);
  }
  KeyPage page;
  page.keys = guarded("listing keys", [&] {
    return impl_->store->list_page(account_id, after, limit + 1, options.status);
  });
  if (page.keys.size() > limit) {
    page.keys.resize(limit);
    page.next_cursor = impl_->cursor_for(account_id, options.status, page.keys.back());
  }
  for (KeyInfo& k : page.keys) k = impl_->shown(std::move(k));
  return page;
}

KeyInfo KeyManager::get(const Uuid& account_id, const Uuid& key_id) {
  auto info = guarded("reading the key", [&] { return impl_->store->get(account_id, key_id); });
  if (!info || info->account_id != account_id) no_such_key(key_id);
  return impl_->shown(std::move(*info));
}

KeyInfo KeyManager::update(const Uuid& account_id, const Uuid& key_id, const KeyUpdate& update,
                           const ChangeContext& context) {
  // Every value is checked before anything is read or written.
  check_change_context(context);
  std::optional<std::string> title;
  if (update.title.clears()) refuse("title cannot be cleared: a key must have a title");
  if (update.title.sets()) {
    const std::string_view t = detail::trim_ascii(update.title.value());
    if (t.empty()) refuse("title must not be empty or blank");
    check_text(t, kTitleRules);
    title.emplace(t);
  }
  if (update.description.sets()) check_text(update.description.value(), kDescriptionRules);
  if (update.metadata.sets()) detail::check_metadata(update.metadata.value());
  std::vector<std::string> scopes;
  if (update.scopes.sets()) scopes = detail::normalize_scopes(update.scopes.value());
  if (update.expires_in_days.sets() &&
      (update.expires_in_days.value() < 1 || update.expires_in_days.value() > kMaxExpiryDays)) {
    refuse("expires_in_days must be between 1 and 365");
  }
  std::vector<RateLimit> rate_limits;
  if (update.rate_limits.sets()) rate_limits = normalize_rate_limits(update.rate_limits.value());
  if (update.credits.sets() && update.credits.value() > KeyPolicyLimits::kMaxCredits) {
    refuse("credits must be 0 to 2^53");
  }
  if (update.refill.sets()) {
    if (update.credits.clears()) refuse("a refill needs credits: they cannot be cleared with it");
    Credits probe;
    probe.refill = update.refill.value();
    check_credits(probe);
  }
  const bool changes_something = !update.title.leaves() || !update.description.leaves() ||
                                 !update.metadata.leaves() || !update.scopes.leaves() ||
                                 !update.expires_in_days.leaves() || !update.rate_limits.leaves();
  const bool changes_credits = !update.credits.leaves() || !update.refill.leaves();

  // Two writes, each with its event: the key's fields, then the lineage's credits.
  // What was committed is reported even when a later step throws. A cache that cannot
  // erase the key after the first write does not stop the second: both are made, then
  // its failure is thrown, so a retry with expected_version finds the whole change made.
  const EventBuilder fields_audit = impl_->audit(AuditAction::update, context, kUpdateFields);
  std::exception_ptr erase_failure;
  const KeyInfo updated = impl_->change(
      "updating the key", account_id, key_id, update.expected_version,
      [&](KeyInfo& key) {
        if (!changes_something) return false;
        if (update.rate_limits.sets()) key.rate_limits = rate_limits;
        if (update.rate_limits.clears()) key.rate_limits.clear();
        if (title) key.title = *title;
        if (update.description.sets()) key.description = update.description.value();
        if (update.description.clears()) key.description.clear();
        if (update.metadata.sets()) key.metadata = update.metadata.value();
        if (update.metadata.clears()) key.metadata.clear();
        if (update.scopes.sets()) key.scopes = scopes;
        if (update.scopes.clears()) key.scopes.clear();
        std::optional<TimePoint> expiry = key.expires_at;
        if (update.expires_in_days.sets()) {
          expiry = impl_->now() + std::chrono::hours(24 * update.expires_in_days.value());
        }
        if (update.expires_in_days.clears()) expiry.reset();
        // A rotated key ends by its grace: its life may be shortened, never lengthened
        // or made endless (doc/key-policy.md, "Rotation").
        if (key.rotated_to && key.expires_at && (!expiry || *expiry > *key.expires_at)) {
          throw Error(ErrorCode::conflict, "a rotated key's expiry can only be brought forward");
        }
        key.expires_at = expiry;
        return true;
      },
      fields_audit, nullptr, changes_credits ? &erase_failure : nullptr);
  // The rest of the call. When it throws (the credits' write failed, say), that is what
  // the caller hears; a cache that could not erase the key after the first write is
  // tried once more first, so that it is not left holding the old verdict unseen.
  const auto rest = [&]() -> KeyInfo {
    if (update.rate_limits.sets() && updated.rate_limits != rate_limits) {
      // A store written before rate limits existed kept the other fields only.
      throw Error(ErrorCode::not_supported, "this store does not keep rate limits");
    }
    if (!changes_credits) return impl_->shown(updated);
    // A lineage without credits has no refill to clear: nothing to write (the key's own
    // fields, if any, were). Setting a refill needs a balance, and the store refuses it.
    if (update.credits.leaves() && update.refill.clears() && !updated.credits) {
      return impl_->shown(updated);
    }
    // Credits are the lineage's, changed after the key's own fields (doc/rate-limits.md,
    // "Management"): a failure here leaves those fields changed, and retrying is safe.
    CreditsChange change;
    change.at = impl_->clock->now();
    if (update.credits.clears()) {
      change.op = CreditsOp::remove;
    } else {
      change.op = CreditsOp::configure;
      if (update.credits.sets()) change.remaining = update.credits.value();
      if (!update.refill.leaves()) {
        change.change_refill = true;
        if (update.refill.sets()) change.refill = update.refill.value();
      }
    }
    const EventBuilder credits_audit =
        impl_->audit(AuditAction::update, context, key_field::kCredits);
    std::optional<KeyInfo> changed = guarded("changing the key's credits", [&] {
      return impl_->store->change_credits_audited(account_id, key_id, change, credits_audit);
    });
    if (!changed || changed->account_id != account_id) no_such_key(key_id);
    then_report(
        [&] {
          // A new refill drops the lease too: credits leased under the old one would
          // otherwise still be spent after the new one's first reset.
          impl_->credits_changed(account_id, *changed,
                                 change.op != CreditsOp::configure || change.remaining ||
                                     change.change_refill);
        },
        [&] { impl_->publish(credits_audit, &updated, &*changed); });
    return impl_->shown(std::move(*changed));
  };
  if (!erase_failure) return rest();
  try {
    (void)rest();
  } catch (...) {
    try {
      detail::erase_everywhere(impl_->store->identity(), updated.public_key);
    } catch (...) {
    }
    throw;
  }
  std::rethrow_exception(erase_failure);  // both writes made: the cache's failure is told
}

void KeyManager::Impl::credits_changed(const Uuid& account_id, const KeyInfo& key,
                                       bool drop_lease) {
  if (drop_lease) validator.limiter().credits_reset(key.lineage());
  // Every key of the lineage: the rotation links, both ways. A lineage is a chain, so
  // the walk finds them all unless a key in the middle was deleted (the keys beyond it
  // are no longer linked) or the chain is longer than the walk goes; then every key of
  // the account is looked at. A key left out would keep a cached verdict saying whether
  // its lineage has credits as it was before, and, until that verdict's TTL, not be
  // charged for a balance just created.
  constexpr int kMaxSteps = 64;
  detail::erase_everywhere(store->identity(), key.public_key);
  bool whole = true;
  for (const bool forward : {false, true}) {
    std::optional<Uuid> next = forward ? key.rotated_to : key.rotated_from;
    for (int step = 0; next && step < kMaxSteps; ++step) {
      std::optional<KeyInfo> k =
          guarded("reading the key", [&] { return store->get(account_id, *next); });
      if (!k) break;
      detail::erase_everywhere(store->identity(), k->public_key);
      next = forward ? k->rotated_to : k->rotated_from;
    }
    if (next) whole = false;  // a link to a key that is gone, or past the last step
  }
  if (whole) return;
  const std::vector<KeyInfo> keys =
      guarded("listing the account's keys", [&] { return store->list(account_id); });
  for (const KeyInfo& k : keys) {
    if (k.lineage() == key.lineage()) detail::erase_everywhere(store->identity(), k.public_key);
  }
}

std::optional<KeyInfo> KeyManager::Impl::read_before(const Uuid& account_id,
                                                     const Uuid& key_id) const {
  if (observers.empty() || store->keeps_audit()) return std::nullopt;
  std::optional<KeyInfo> key =
      guarded("reading the key", [&] { return store->get(account_id, key_id); });
  if (key && key->account_id != account_id) key.reset();
  return key;
}

KeyInfo KeyManager::set_credits(const Uuid& account_id, const Uuid& key_id, std::uint64_t n,
                                const ChangeContext& context) {
  check_change_context(context);
  if (n > KeyPolicyLimits::kMaxCredits) refuse("credits must be 0 to 2^53");
  const std::optional<KeyInfo> before = impl_->read_before(account_id, key_id);
  CreditsChange change;
  change.op = CreditsOp::configure;
  change.remaining = n;
  change.at = impl_->clock->now();
  const EventBuilder audit = impl_->audit(AuditAction::set_credits, context, key_field::kCredits);
  std::optional<KeyInfo> changed = guarded("setting the key's credits", [&] {
    return impl_->store->change_credits_audited(account_id, key_id, change, audit);
  });
  if (!changed || changed->account_id != account_id) no_such_key(key_id);
  then_report([&] { impl_->credits_changed(account_id, *changed, true); },
              [&] { impl_->publish_change(audit, before, *changed); });
  return impl_->shown(std::move(*changed));
}

KeyInfo KeyManager::add_credits(const Uuid& account_id, const Uuid& key_id, std::int64_t delta,
                                const ChangeContext& context) {
  check_change_context(context);
  constexpr auto kMax = static_cast<std::int64_t>(KeyPolicyLimits::kMaxCredits);
  if (delta > kMax || delta < -kMax) refuse("a credit change must be within -2^53 to 2^53");
  const std::optional<KeyInfo> before = impl_->read_before(account_id, key_id);
  CreditsChange change;
  change.op = CreditsOp::add;
  change.delta = delta;
  change.at = impl_->clock->now();
  const EventBuilder audit = impl_->audit(AuditAction::add_credits, context, key_field::kCredits);
  std::optional<KeyInfo> changed = guarded("adding to the key's credits", [&] {
    return impl_->store->change_credits_audited(account_id, key_id, change, audit);
  });
  if (!changed || changed->account_id != account_id) no_such_key(key_id);
  impl_->publish_change(audit, before, *changed);
  return impl_->shown(std::move(*changed));
}

KeyInfo KeyManager::disable(const Uuid& account_id, const Uuid& key_id,
                            const ChangeContext& context) {
  check_change_context(context);
  return impl_->shown(impl_->change(
      "disabling the key", account_id, key_id, std::nullopt,
      [](KeyInfo& key) {
        if (key.status == KeyStatus::revoked) {
          throw Error(ErrorCode::conflict, "a revoked key cannot be disabled: revocation is final");
        }
        if (key.status == KeyStatus::disabled) return false;
        key.status = KeyStatus::disabled;
        return true;
      },
      impl_->audit(AuditAction::disable, context, 0, kStatusFields)));
}

KeyInfo KeyManager::enable(const Uuid& account_id, const Uuid& key_id,
                           const ChangeContext& context) {
  check_change_context(context);
  return impl_->shown(impl_->change(
      "enabling the key", account_id, key_id, std::nullopt,
      [](KeyInfo& key) {
        if (key.status == KeyStatus::revoked) {
          throw Error(ErrorCode::conflict, "a revoked key cannot be enabled: revocation is final");
        }
        if (key.status == KeyStatus::active) return false;
        key.status = KeyStatus::active;
        return true;
      },
      impl_->audit(AuditAction::enable, context, 0, kStatusFields)));
}

CreatedKey KeyManager::rotate(const Uuid& account_id, const Uuid& key_id,
                              const RotateRequest& request, const ChangeContext& context) {
  check_change_context(context);
  if (request.grace.count() < 0 || request.grace > kMaxRotationGrace) {
    refuse("grace must be between 0 seconds and 7 days");
  }
  SecretString secret;
  KeyRecord successor = impl_->new_record(account_id, secret);
  const EventBuilder audit = impl_->audit(AuditAction::rotate, context, 0, kRotateFields);
  for (int attempt = 0; attempt < kMaxChangeAttempts; ++attempt) {
    std::optional<KeyInfo> current =
        guarded("rotating the key", [&] { return impl_->store->get(account_id, key_id); });
    if (!current || current->account_id != account_id) no_such_key(key_id);
    const TimePoint now = impl_->now();
    // An expired, revoked, disabled or already rotated key is never brought back to
    // life by a successor, nor given a longer one (doc/key-policy.md, "Rotation").
    if (current->status == KeyStatus::revoked) {
      throw Error(ErrorCode::conflict, "a revoked key cannot be rotated");
    }
    if (current->status == KeyStatus::disabled) {
      throw Error(ErrorCode::conflict, "a disabled key cannot be rotated; enable it first");
    }
    if (current->expires_at && now >= *current->expires_at) {
      throw Error(ErrorCode::conflict, "an expired key cannot be rotated");
    }
    if (current->rotated_to) {
      throw Error(ErrorCode::conflict, "the key was already rotated; rotate its successor");
    }
    KeyInfo& next = successor.info;
    next.title = current->title;
    next.description = current->description;
    next.metadata = current->metadata;
    next.scopes = current->scopes;
    next.rate_limits = current->rate_limits;
    // The same lineage: the successor spends the same rate-limit state and credits.
    next.lineage_id = current->lineage();
    next.credits = current->credits;
    next.expires_at = current->expires_at;  // the same instant: never a longer life
    next.created_at = now;
    next.updated_at = now;
    next.rotated_from = current->key_id;

    KeyInfo old = *current;
    const TimePoint end_of_grace = now + request.grace;
    old.expires_at = old.expires_at ? std::min(*old.expires_at, end_of_grace) : end_of_grace;
    old.rotated_to = next.key_id;
    old.updated_at = now;
    WriteResult written = guarded("rotating the key", [&] {
      return impl_->store->rotate_audited(account_id, old, current->version, successor, audit);
    });
    switch (written.outcome) {
      case WriteOutcome::applied: {
        // Both keys' verdicts go from every cache over this store. Never thrown from:
        // the successor is committed, and throwing would lose the only copy of its
        // secret. erase_everywhere() erases every other cache before it reports one
        // that failed, so only a cache that cannot be reached (a shared Redis) may keep
        // the old key's verdict; every node's revision poll then erases it from the
        // change log, or clears that cache while it cannot (doc/key-policy.md,
        // "Rotation").
        for (const std::string* pk : {&next.public_key, &written.key.public_key}) {
          try {
            detail::erase_everywhere(impl_->store->identity(), *pk);
          } catch (...) {
          }
        }
        impl_->publish(audit, [&] {
          (void)audit.event(&*current, &written.key);
          (void)audit.event(nullptr, &next);
        });
        // Credits as get() shows them (noexcept: the secret is in hand).
        return CreatedKey{impl_->shown(std::move(successor.info)), std::move(secret)};
      }
      case WriteOutcome::not_found: no_such_key(key_id);
      case WriteOutcome::conflict: continue;
    }
  }
  throw Error(ErrorCode::busy, "rotating the key: the key kept changing; try again");
}

std::size_t KeyManager::revoke_all(const Uuid& account_id, const ChangeContext& context) {
  check_change_context(context);
  // The store is asked again until it revokes nothing: a key that a concurrent rotate()
  // committed while the first statement ran may not be in that statement's snapshot
  // (PostgreSQL, READ COMMITTED), and must not stay active after this returns.
  constexpr int kMaxRounds = 8;
  std::size_t count = 0;
  std::exception_ptr failure;
  const EventBuilder audit = impl_->audit(AuditAction::revoke_all, context, 0, kStatusFields);
  std::vector<AuditEvent> events;  // those of the rounds that committed
  try {
    for (int round = 0; round < kMaxRounds; ++round) {
      const TimePoint now = impl_->now();
      const std::vector<KeyInfo> revoked = guarded("revoking the account's keys", [&] {
        return impl_->store->revoke_all_audited(account_id, now, audit);
      });
      // Only the events of keys the committed round revoked: a store that retried its
      // transaction may have built events for keys its last attempt no longer found.
      std::vector<Uuid> ids;
      ids.reserve(revoked.size());
      for (const KeyInfo& info : revoked) ids.push_back(info.key_id);
      std::sort(ids.begin(), ids.end());
      for (AuditEvent& e : audit.take()) {
        if (std::binary_search(ids.begin(), ids.end(), e.key_id)) events.push_back(std::move(e));
      }
      if (revoked.empty()) break;
      count += revoked.size();
    }
  } catch (...) {
    failure = std::current_exception();
  }
  // Then every revoked key of the account leaves every cache, those of an earlier call
  // that failed part way included (a retry would not return them again, and a store
  // without a revision never tells the polls). Erasing a key twice is harmless. Erase
  // every one even if a cache fails, then report the first failure.
  try {
    for (const KeyInfo& info :
         guarded("listing the account's keys", [&] { return impl_->store->list(account_id); })) {
      if (info.status != KeyStatus::revoked) continue;
      try {
        detail::erase_everywhere(impl_->store->identity(), info.public_key);
      } catch (...) {
        if (!failure) failure = std::current_exception();
      }
    }
  } catch (...) {
    if (!failure) failure = std::current_exception();
  }
  // What this call revoked is reported even when it then throws: those keys stay revoked.
  if (count > 0) {
    (void)audit.take();  // a failed round's
    try {
      for (const AuditEvent& e : events) audit.keep(e);
    } catch (...) {
    }
    impl_->publish(audit, [&] {
      // A store without an audit trail tells only how many: one event for them all.
      AuditEvent e;
      e.time = impl_->now();
      e.event_id = detail::audit_event_id(e.time);
      e.action = AuditAction::revoke_all;
      e.context = context;
      e.account_id = account_id;
      e.before = "{}";
      e.after = detail::count_json("revoked", count);
      audit.keep(e);
    });
  }
  if (failure) std::rethrow_exception(failure);
  return count;
}

KeyInfo KeyManager::revoke(const Uuid& account_id, const Uuid& key_id,
                           const ChangeContext& context) {
  check_change_context(context);
  const bool observing = !impl_->observers.empty();
  std::optional<KeyInfo> before;  // the key as read, when it was not revoked yet
  bool committed = false;         // replace() wrote it: a later not_supported is a cache's
  const EventBuilder audit = impl_->audit(AuditAction::revoke, context, 0, kStatusFields);
  try {
    return impl_->shown(impl_->change(
        "revoking the key", account_id, key_id, std::nullopt,
        [&](KeyInfo& key) {
          if (key.status == KeyStatus::revoked) return false;
          if (observing) before = key;
          key.status = KeyStatus::revoked;
          return true;
        },
        audit, &committed));
  } catch (const Error& e) {
    // Only a store without replace() falls back to set_status(): once the revoke has
    // committed (and been reported), an error from erasing the caches is the caller's.
    if (e.code() != ErrorCode::not_supported || committed) throw;
  }
  // A store written before replace() existed: its own set_status.
  auto info = guarded("revoking the key", [&] {
    return impl_->store->set_status(account_id, key_id, KeyStatus::revoked);
  });
  if (!info) no_such_key(key_id);
  // Every Validator over this store's data in the process, not only our own.
  then_report([&] { detail::erase_everywhere(impl_->store->identity(), info->public_key); },
              [&] { impl_->publish_change(audit, before, *info); });
  return impl_->shown(std::move(*info));
}

KeyInfo KeyManager::remove(const Uuid& account_id, const Uuid& key_id,
                           const ChangeContext& context) {
  check_change_context(context);
  const EventBuilder audit = impl_->audit(AuditAction::remove, context, 0);
  auto info = guarded("deleting the key",
                      [&] { return impl_->store->remove_audited(account_id, key_id, audit); });
  if (!info)
    throw Error(ErrorCode::not_found, "no key " + key_id.to_string() + " for this account");
  // Every Validator over this store's data in the process, not only our own.
  then_report([&] { detail::erase_everywhere(impl_->store->identity(), info->public_key); },
              [&] { impl_->publish(audit, &*info, nullptr); });
  return impl_->shown(std::move(*info));
}

std::vector<PepperCount> KeyManager::pepper_counts() {
  return guarded("counting keys per pepper", [&] { return impl_->store->pepper_counts(); });
}

ImportReport KeyManager::import_keys(std::istream& in, const ImportOptions& options,
                                     const ChangeContext& context) {
  check_change_context(context);
  const EventBuilder audit = impl_->audit(AuditAction::import, context, 0, 0, AuditAction::import);
  const std::function<void(const KeyInfo&)> imported = [&](const KeyInfo& key) {
    // Only this key's event: one built for a row the store then refused (a duplicate)
    // was never written.
    std::vector<AuditEvent> built = audit.take();
    try {
      for (const AuditEvent& e : built) {
        if (e.key_id == key.key_id) audit.keep(e);
      }
    } catch (...) {
    }
    impl_->publish(audit, nullptr, &key);
  };
  return detail::import_keys(*impl_->store, *impl_->hasher, impl_->validator.options(), in, options,
                             audit, imported);
}

ValidationResult KeyManager::validate(std::string_view public_key,
                                      std::string_view secret_key) const noexcept {
  return impl_->validator.validate(public_key, secret_key);
}

ValidationResult KeyManager::validate(std::string_view token) const noexcept {
  return impl_->validator.validate(token);
}

ValidationResult KeyManager::validate(std::string_view token,
                                      const Requirements& requirements) const noexcept {
  return impl_->validator.validate(token, requirements);
}

Validator& KeyManager::validator() noexcept { return impl_->validator; }

std::uint64_t KeyManager::observer_failures() const noexcept {
  return impl_->observers.failures() + impl_->validator.observer_failures();
}

}  // namespace apikeys
