// Scopes: the grammar of a scope string, the normal form of a key's set of scopes, and
// the rule that decides whether a granted scope grants a required one (README.md, "Key
// policy"; doc/key-policy.md).
// Thread-safety and ownership: pure functions over values.
#ifndef APIKEYS_SRC_SCOPE_HPP
#define APIKEYS_SRC_SCOPE_HPP

#include <string>
#include <string_view>
#include <vector>

namespace apikeys::detail {

// The rule a scope string breaks, or nullptr when it follows the grammar. A granted
// scope (`wildcard_allowed`) may end in a whole wildcard segment, `*` or `**` (or be
// `*` or `**` alone); a required scope is always literal.
const char* scope_error(std::string_view scope, bool wildcard_allowed) noexcept;

// scope_error(scope, false) == nullptr, answered for a scope of 8 to 16 characters by a
// handful of vector compares rather than a loop over its characters (a required scope
// is checked on every validation that asks for it).
bool is_literal_scope(std::string_view scope) noexcept;

// Checks every scope (Error(invalid_argument) naming the rule, never the value), and
// returns them sorted without duplicates, at most KeyPolicyLimits::kMaxScopes.
std::vector<std::string> normalize_scopes(const std::vector<std::string>& scopes);

// True when `granted` (a valid granted scope) grants `required` (a valid literal scope):
// equal; or `p.*` and `required` is p. plus one segment; or `p.**` and `required` is p.
// plus one or more segments (either separator); or `**`, which grants everything.
// Separators match literally: `a.*` does not grant `a:b`. A wildcard that is not a whole
// last segment ("read*", never valid, but a caller's store may return one) grants
// nothing.
bool scope_grants(std::string_view granted, std::string_view required) noexcept;

// True when some scope of `granted` grants `required`, and `required` is a valid literal
// scope (an invalid one is never granted).
bool scopes_grant(const std::vector<std::string>& granted, std::string_view required) noexcept;

// The stored form of a normalised set: the scopes joined by single spaces ("" for none;
// the grammar has no space), and back.
std::string join_scopes(const std::vector<std::string>& scopes);
std::vector<std::string> split_scopes(std::string_view joined);

}  // namespace apikeys::detail

#endif  // APIKEYS_SRC_SCOPE_HPP
