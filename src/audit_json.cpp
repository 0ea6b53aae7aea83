// The JSON of an AuditEvent's `before` and `after`: see audit_json.hpp.
#include "audit_json.hpp"

#include <algorithm>
#include <array>
#include <atomic>
#include <cstddef>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

#include "json_escape.hpp"

namespace apikeys::detail {

namespace {

using Json = nlohmann::ordered_json;  // keeps members in the order written

// The names, in bit order (key_field::kKeyId is bit 0).
constexpr std::array<std::string_view, 17> kNames = {
    "key_id",       "public_key",   "title",      "description", "status",   "created_at",
    "expires_at",   "last_used_at", "updated_at", "version",     "metadata", "scopes",
    "rotated_from", "rotated_to",   "lineage_id", "rate_limits", "credits"};

std::string dump(const Json& j) { return j.dump(-1, ' ', false, Json::error_handler_t::replace); }

Json time_or_null(const std::optional<TimePoint>& t) {
  return t ? Json(format_utc(*t)) : Json(nullptr);
}

Json uuid_or_null(const std::optional<Uuid>& id) {
  return id ? Json(id->to_string()) : Json(nullptr);
}

// Stored metadata as it is, so numbers keep their exact text: {} when none, null when
// the text is not one JSON object (a user's store may hold anything).
std::string metadata_text(const std::string& metadata) {
  if (metadata.empty()) return "{}";
  const std::size_t first = metadata.find_first_not_of(" \t\r\n");
  const bool object = first != std::string::npos && metadata[first] == '{' &&
                      metadata.find('\0') == std::string::npos && Json::accept(metadata);
  return object ? metadata : "null";
}

Json credits_json(const std::optional<Credits>& credits) {
  if (!credits) return Json(nullptr);
  Json j;
  j["remaining"] = credits->remaining;
  j["refill"] = nullptr;
  j["next_refill_at"] = nullptr;
  if (const std::optional<CreditRefill>& r = credits->refill) {
    Json refill;
    refill["amount"] = r->amount;
    refill["interval"] = r->interval == RefillInterval::monthly ? "monthly" : "daily";
    refill["mode"] = r->mode == RefillMode::add_capped ? "add" : "reset";
    refill["cap"] = r->mode == RefillMode::add_capped ? Json(r->effective_cap()) : Json(nullptr);
    j["refill"] = std::move(refill);
    j["next_refill_at"] =
        format_utc(refill_period_start(r->interval, credits->refilled_period + 1));
  }
  return j;
}

Json rate_limits_json(const std::vector<RateLimit>& limits) {
  Json j = Json::array();
  for (const RateLimit& l : limits) {
    Json limit;
    limit["name"] = l.name;
    limit["limit"] = l.limit;
    limit["period_ms"] = l.period.count();
    limit["burst"] = l.effective_burst();
    j.push_back(std::move(limit));
  }
  return j;
}

// The JSON text of field `bit` (one bit of key_field) of `key`.
std::string value_of(const KeyInfo& k, KeyFields bit) {
  using namespace key_field;
  switch (bit) {
    case kKeyId: return dump(k.key_id.to_string());
    case kPublicKey: return dump(k.public_key);
    case kTitle: return dump(k.title);
    case kDescription: return dump(k.description);
    case kStatus: return dump(to_string(k.status));
    case kCreatedAt: return dump(format_utc(k.created_at));
    case kExpiresAt: return dump(time_or_null(k.expires_at));
    case kLastUsedAt: return dump(time_or_null(k.last_used_at));
    case kUpdatedAt: return dump(format_utc(k.updated_at));
    case kVersion: return dump(k.version);
    case kMetadata: return metadata_text(k.metadata);
    case kScopes: return dump(k.scopes);
    case kRotatedFrom: return dump(uuid_or_null(k.rotated_from));
    case kRotatedTo: return dump(uuid_or_null(k.rotated_to));
    case kLineageId: return dump(k.lineage().to_string());
    case kRateLimits: return dump(rate_limits_json(k.rate_limits));
    case kCredits: return dump(credits_json(k.credits));
    default: return "null";
  }
}

}  // namespace

std::string key_json(const KeyInfo& key, KeyFields fields) {
  std::string out = "{";
  for (std::size_t i = 0; i < kNames.size(); ++i) {
    const KeyFields bit = KeyFields{1} << i;
    if ((fields & bit) == 0) continue;
    if (out.size() > 1) out += ',';
    out += '"';
    out += kNames[i];
    out += "\":";
    out += value_of(key, bit);
  }
  out += '}';
  // Titles and metadata are the key owner's text: nothing in them may act on a terminal
  // or break a line of whatever shows or logs the trail.
  return escape_json_text(out, /*one_line=*/true);
}

KeyFields changed_fields(const KeyInfo& before, const KeyInfo& after, KeyFields candidates) {
  KeyFields changed = 0;
  for (std::size_t i = 0; i < kNames.size(); ++i) {
    const KeyFields bit = KeyFields{1} << i;
    if ((candidates & bit) != 0 && value_of(before, bit) != value_of(after, bit)) changed |= bit;
  }
  return changed;
}

std::string count_json(std::string_view name, std::uint64_t n) {
  std::string out = "{\"";
  out += name;
  out += "\":";
  out += std::to_string(n);
  out += '}';
  return out;
}

Uuid audit_event_id(TimePoint at) {
  static std::atomic<std::uint64_t> counter{0};
  const std::uint64_t n = counter.fetch_add(1, std::memory_order_relaxed) & ((1ull << 42) - 1);
  const std::uint64_t ms = static_cast<std::uint64_t>(
      std::clamp<std::int64_t>(to_unix_millis(at), 0, (std::int64_t{1} << 48) - 1));
  std::array<std::uint8_t, 16> b = Uuid::random().bytes();  // bytes 12-15 stay random
  for (int i = 0; i < 6; ++i) b[i] = static_cast<std::uint8_t>(ms >> (40 - 8 * i));
  b[6] = static_cast<std::uint8_t>(0x70 | ((n >> 38) & 0x0F));  // version 7
  b[7] = static_cast<std::uint8_t>(n >> 30);
  b[8] = static_cast<std::uint8_t>(0x80 | ((n >> 24) & 0x3F));  // RFC 9562 variant
  b[9] = static_cast<std::uint8_t>(n >> 16);
  b[10] = static_cast<std::uint8_t>(n >> 8);
  b[11] = static_cast<std::uint8_t>(n);
  return Uuid(b);
}

}  // namespace apikeys::detail
