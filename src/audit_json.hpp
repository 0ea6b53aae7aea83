// Private: the `before` and `after` JSON of an AuditEvent (observer.hpp). A key's
// fields are written under the names and in the shapes `apikeys list --json` prints
// them; a KeyInfo holds no secret and no digest, so neither can reach the text.
// Thread-safety: plain functions of their arguments.
// Ownership: they return what they build.
#ifndef APIKEYS_SRC_AUDIT_JSON_HPP
#define APIKEYS_SRC_AUDIT_JSON_HPP

#include <cstdint>
#include <string>
#include <string_view>

#include "apikeys/types.hpp"

namespace apikeys::detail {

// A set of a key's fields, one bit each, in the order they are written.
using KeyFields = std::uint32_t;
namespace key_field {
constexpr KeyFields kKeyId = 1u << 0;
constexpr KeyFields kPublicKey = 1u << 1;
constexpr KeyFields kTitle = 1u << 2;
constexpr KeyFields kDescription = 1u << 3;
constexpr KeyFields kStatus = 1u << 4;
constexpr KeyFields kCreatedAt = 1u << 5;
constexpr KeyFields kExpiresAt = 1u << 6;
constexpr KeyFields kLastUsedAt = 1u << 7;
constexpr KeyFields kUpdatedAt = 1u << 8;
constexpr KeyFields kVersion = 1u << 9;
constexpr KeyFields kMetadata = 1u << 10;
constexpr KeyFields kScopes = 1u << 11;
constexpr KeyFields kRotatedFrom = 1u << 12;
constexpr KeyFields kRotatedTo = 1u << 13;
constexpr KeyFields kLineageId = 1u << 14;
constexpr KeyFields kRateLimits = 1u << 15;
constexpr KeyFields kCredits = 1u << 16;
constexpr KeyFields kAll = (1u << 17) - 1;
}  // namespace key_field

// A JSON object holding `fields` of `key`, with their `apikeys list --json` names:
// key_id, public_key, title, description, status, created_at, expires_at,
// last_used_at, updated_at, version, metadata (the stored JSON text as it is; {} for
// none; null for stored text that is not a JSON object), scopes, rotated_from,
// rotated_to, lineage_id, rate_limits ([{name, limit, period_ms, burst}]) and credits
// (null, or {remaining, refill: null or {amount, interval, mode, cap}, next_refill_at}).
// Times are RFC 3339 UTC with milliseconds; absent optionals are null. Compact (no
// white space outside the metadata text) and one line, escaped by escape_json_text()
// (src/json_escape.hpp). Invalid UTF-8 (from a user's store) is replaced, never thrown
// on.
[[nodiscard]] std::string key_json(const KeyInfo& key, KeyFields fields);

// The fields among `candidates` whose JSON differs between `before` and `after`.
[[nodiscard]] KeyFields changed_fields(const KeyInfo& before, const KeyInfo& after,
                                       KeyFields candidates);

// A new AuditEvent::event_id for an event made at `at`: a version 7 UUID (RFC 9562)
// whose 48-bit millisecond time is `at`'s (clamped to 0..2^48-1), whose next 42 bits
// are a counter shared by the whole process, and whose last 32 bits are random. So the
// events this process makes in one millisecond sort, by id, in the order it made them,
// and the trail's order (time, then id) is the order of the changes. Throws
// Error(crypto) if the CSPRNG fails.
[[nodiscard]] Uuid audit_event_id(TimePoint at);

// {"<name>":n}, e.g. {"revoked":3}. REQUIRES: `name` needs no escaping.
[[nodiscard]] std::string count_json(std::string_view name, std::uint64_t n);

}  // namespace apikeys::detail

#endif  // APIKEYS_SRC_AUDIT_JSON_HPP
