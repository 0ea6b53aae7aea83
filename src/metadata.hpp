// A key's metadata: a JSON object, checked here with a JSON parser that stays private
// to src/ (no JSON type in a public header). README.md, "Key policy", states the rules.
// Thread-safety and ownership: pure functions over values.
#ifndef APIKEYS_SRC_METADATA_HPP
#define APIKEYS_SRC_METADATA_HPP

#include <string_view>

namespace apikeys::detail {

// The rule `text` breaks as a key's metadata, or nullptr when it is acceptable: a JSON
// object (RFC 8259, strict: no comments, no trailing commas, nothing after it but white
// space) of at most KeyPolicyLimits::kMaxMetadataBytes bytes of valid UTF-8, nesting at
// most kMaxMetadataDepth objects and arrays deep (the top object is depth 1), with no
// member name twice in one object. Empty text is "no metadata" and acceptable.
const char* metadata_error(std::string_view text) noexcept;

// Throws Error(invalid_argument) with metadata_error(text) when it is not nullptr.
void check_metadata(std::string_view text);

}  // namespace apikeys::detail

#endif  // APIKEYS_SRC_METADATA_HPP
