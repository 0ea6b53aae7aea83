#include "metadata.hpp"

#include <algorithm>
#include <limits>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "apikeys/error.hpp"
#include "apikeys/types.hpp"
#include "text.hpp"

namespace apikeys::detail {

namespace {

using json = nlohmann::json;

// A SAX handler that builds nothing: it tracks depth and, per open object, the member
// names seen so far, and stops at the first broken rule.
class MetadataChecker final : public nlohmann::json_sax<json> {
 public:
  // The first rule broken, or nullptr.
  [[nodiscard]] const char* error() const noexcept { return error_; }

  bool null() override { return value(); }
  bool boolean(bool /*val*/) override { return value(); }
  bool number_integer(number_integer_t /*val*/) override { return value(); }
  bool number_unsigned(number_unsigned_t /*val*/) override { return value(); }
  bool number_float(number_float_t /*val*/, const string_t& /*s*/) override { return value(); }
  bool string(string_t& /*val*/) override { return value(); }
  bool binary(binary_t& /*val*/) override { return fail("metadata must be valid JSON"); }

  bool start_object(std::size_t /*elements*/) override {
    if (!value()) return false;
    if (!open()) return false;
    names_.emplace_back();
    in_object_.push_back(true);
    return true;
  }
  bool key(string_t& name) override {
    std::vector<std::string>& seen = names_.back();
    if (std::find(seen.begin(), seen.end(), name) != seen.end()) {
      return fail("metadata must not repeat a member name within one object");
    }
    seen.push_back(name);
    return true;
  }
  bool end_object() override {
    names_.pop_back();
    in_object_.pop_back();
    return true;
  }
  bool start_array(std::size_t /*elements*/) override {
    if (!value()) return false;
    if (!open()) return false;
    in_object_.push_back(false);
    return true;
  }
  bool end_array() override {
    in_object_.pop_back();
    return true;
  }
  bool parse_error(std::size_t /*position*/, const std::string& /*last_token*/,
                   const nlohmann::detail::exception& /*ex*/) override {
    // The exception's text may quote the input: never keep it.
    return fail("metadata must be valid JSON");
  }

 private:
  bool value() const { return error_ == nullptr; }
  bool open() {
    if (in_object_.size() + 1 > KeyPolicyLimits::kMaxMetadataDepth) {
      return fail("metadata must nest at most 8 levels deep");
    }
    return true;
  }
  bool fail(const char* rule) {
    if (error_ == nullptr) error_ = rule;
    return false;
  }

  const char* error_ = nullptr;
  std::vector<bool> in_object_;
  std::vector<std::vector<std::string>> names_;
};

}  // namespace

const char* metadata_error(std::string_view text) noexcept {
  if (text.empty()) return nullptr;
  if (text.size() > KeyPolicyLimits::kMaxMetadataBytes) {
    return "metadata must be at most 4096 bytes";
  }
  if (!utf8_length(text, std::numeric_limits<std::size_t>::max())) {
    return "metadata must be valid UTF-8";
  }
  // JSON has no raw NUL anywhere (inside a string it is escaped), and the parser would
  // take one for the end of the text, accepting whatever follows it.
  if (text.find('\0') != std::string_view::npos) return "metadata must be valid JSON";
  // The first character that is not white space decides "an object" before parsing.
  const std::size_t first = text.find_first_not_of(" \t\r\n");
  if (first == std::string_view::npos) return "metadata must be valid JSON";
  if (text[first] != '{') return "metadata must be a JSON object";
  try {
    MetadataChecker checker;
    const bool ok = json::sax_parse(text.begin(), text.end(), &checker,
                                    nlohmann::detail::input_format_t::json, /*strict=*/true);
    if (checker.error() != nullptr) return checker.error();
    if (!ok) return "metadata must be valid JSON";
    return nullptr;
  } catch (...) {
    // std::bad_alloc, or a parser exception despite the handler: refuse.
    return "metadata must be valid JSON";
  }
}

void check_metadata(std::string_view text) {
  if (const char* rule = metadata_error(text)) throw Error(ErrorCode::invalid_argument, rule);
}

}  // namespace apikeys::detail
