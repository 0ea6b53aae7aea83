// fuzz_token: key and token parsing. Checks KeyFormat::check, is_public_key and
// is_secret_key against a straightforward reference, the "pk:sk" split that
// Validator::validate(token) makes (malformed never touches the store; a well-formed
// token is exactly validate(pk, sk)), and Uuid::parse / to_string round trips.
// Input: public prefix \0 secret prefix \0 length byte, then a key or token.

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "apikeys/apikeys.hpp"
#include "fuzz_support.hpp"

namespace {

using apikeys::ValidationCode;

bool ref_base62(char c) {
  return std::string_view("0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz")
             .find(c) != std::string_view::npos;
}

bool ref_prefix_ok(std::string_view p) {
  if (p.size() < 1 || p.size() > 32) return false;
  for (char c : p) {
    if (!ref_base62(c) && c != '_') return false;
  }
  return true;
}

bool ref_format_ok(const apikeys::KeyFormat& f) {
  return ref_prefix_ok(f.public_prefix) && ref_prefix_ok(f.secret_prefix) &&
         f.public_prefix != f.secret_prefix && f.length >= 22 && f.length <= 128;
}

bool ref_key(std::string_view key, std::string_view prefix, std::size_t length) {
  if (key.substr(0, prefix.size()) != prefix) return false;
  const std::string_view body = key.substr(std::min(prefix.size(), key.size()));
  if (body.size() != length) return false;
  for (char c : body) {
    if (!ref_base62(c)) return false;
  }
  return true;
}

// A store that holds nothing and counts lookups: a malformed token must not reach it.
class CountingStore final : public apikeys::Store {
 public:
  void insert(const apikeys::KeyRecord&) override {}
  std::optional<apikeys::KeyRecord> find(std::string_view) override {
    finds.fetch_add(1);
    return std::nullopt;
  }
  std::vector<apikeys::KeyInfo> list(const apikeys::Uuid&) override { return {}; }
  std::optional<apikeys::KeyInfo> set_status(const apikeys::Uuid&, const apikeys::Uuid&,
                                             apikeys::KeyStatus) override {
    return std::nullopt;
  }
  std::optional<apikeys::KeyInfo> remove(const apikeys::Uuid&, const apikeys::Uuid&) override {
    return std::nullopt;
  }
  void record_last_use(const std::vector<apikeys::LastUse>&) override {}
  std::atomic<long> finds{0};
};

const std::shared_ptr<apikeys::Hasher>& hasher() {
  static const std::shared_ptr<apikeys::Hasher> h =
      std::make_shared<apikeys::HmacSha256Hasher>(fuzz::kPepper);
  return h;
}

// A Validator (and its counting store) per format, built once: building one per input
// would dominate the run. Bounded, since formats come from the input.
struct Checker {
  std::shared_ptr<CountingStore> store = std::make_shared<CountingStore>();
  std::unique_ptr<apikeys::Validator> validator;
};

Checker& checker_for(const apikeys::KeyFormat& format) {
  static std::map<std::string, Checker> checkers;
  std::string id = format.public_prefix + '\0' + format.secret_prefix + '\0';
  id += std::to_string(format.length);
  auto it = checkers.find(id);
  if (it == checkers.end()) {
    if (checkers.size() >= 256) checkers.clear();
    Checker c;
    apikeys::ValidatorOptions options;
    options.format = format;
    options.record_last_use = false;  // no background thread
    c.validator = std::make_unique<apikeys::Validator>(c.store, hasher(), options);
    it = checkers.emplace(std::move(id), std::move(c)).first;
  }
  it->second.store->finds.store(0);
  return it->second;
}

void check_token(const apikeys::KeyFormat& format, std::string_view token) {
  Checker& checker = checker_for(format);
  CountingStore* store = checker.store.get();
  const apikeys::Validator& validator = *checker.validator;

  const auto colon = token.find(':');
  const bool well_formed = colon != std::string_view::npos &&
                           ref_key(token.substr(0, colon), format.public_prefix, format.length) &&
                           ref_key(token.substr(colon + 1), format.secret_prefix, format.length);

  const apikeys::ValidationResult r = validator.validate(token);
  if (!well_formed) {
    FUZZ_CHECK(r.code == ValidationCode::malformed);
    FUZZ_CHECK(store->finds.load() == 0);
  } else {
    FUZZ_CHECK(r.code == ValidationCode::not_found);
    FUZZ_CHECK(store->finds.load() == 1);
    // The token form is exactly the two-argument form on its halves.
    const auto r2 = validator.validate(token.substr(0, colon), token.substr(colon + 1));
    FUZZ_CHECK(r2.code == r.code);
  }
  FUZZ_CHECK(!r.ok() && r.account_id.is_nil() && r.key_id.is_nil());
}

bool ref_hex(char c) {
  return std::string_view("0123456789abcdefABCDEF").find(c) != std::string_view::npos;
}

void check_uuid(std::string_view text) {
  bool ref = text.size() == 36;
  for (std::size_t i = 0; ref && i < 36; ++i) {
    ref = (i == 8 || i == 13 || i == 18 || i == 23) ? text[i] == '-' : ref_hex(text[i]);
  }
  const auto u = apikeys::Uuid::parse(text);
  FUZZ_CHECK(u.has_value() == ref);
  if (u) {
    std::string lower(text);
    for (char& c : lower) {
      if (c >= 'A' && c <= 'F') c = static_cast<char>(c - 'A' + 'a');
    }
    FUZZ_CHECK(u->to_string() == lower);
    FUZZ_CHECK(apikeys::Uuid::parse(u->to_string()) == u);
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  const std::string_view whole(reinterpret_cast<const char*>(data), size);

  // The whole input as a token or a key of the default format.
  static const apikeys::KeyFormat default_format;
  FUZZ_CHECK(default_format.is_public_key(whole) == ref_key(whole, "pk_", 32));
  FUZZ_CHECK(default_format.is_secret_key(whole) == ref_key(whole, "sk_", 32));
  check_token(default_format, whole);
  check_uuid(whole);

  // A format read from the input, then a key or token in it.
  fuzz::Reader in(data, size);
  apikeys::KeyFormat format;
  format.public_prefix = std::string(in.field());
  format.secret_prefix = std::string(in.field());
  format.length = in.byte();
  const std::string_view key = in.rest();

  bool accepted = true;
  try {
    format.check();
  } catch (const apikeys::Error& e) {
    FUZZ_CHECK(e.code() == apikeys::ErrorCode::invalid_argument);
    accepted = false;
  }
  FUZZ_CHECK(accepted == ref_format_ok(format));
  if (accepted) {
    FUZZ_CHECK(format.is_public_key(key) == ref_key(key, format.public_prefix, format.length));
    FUZZ_CHECK(format.is_secret_key(key) == ref_key(key, format.secret_prefix, format.length));
    check_token(format, key);
  } else {
    bool threw = false;
    apikeys::ValidatorOptions options;
    options.format = format;
    options.record_last_use = false;
    try {
      const apikeys::Validator v(std::make_shared<CountingStore>(), hasher(), options);
    } catch (const apikeys::Error& e) {
      threw = e.code() == apikeys::ErrorCode::invalid_argument;
    }
    FUZZ_CHECK(threw);  // a Validator refuses a bad format instead of misparsing keys
  }
  return 0;
}
