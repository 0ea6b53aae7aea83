// fuzz_token: key and token parsing. Checks KeyFormat::check, is_public_key and
// is_secret_key against a straightforward reference, with and without a checksum (an
// accepted checksummed key is exactly its first part plus append_key_checksum of it),
// the "pk:sk" split that Validator::validate(token) makes (malformed never touches the
// store; a well-formed token is exactly validate(pk, sk)), a Validator of the branded
// format that also accepts the default one, that a generated branded key with one byte
// changed is refused, and Uuid::parse / to_string round trips.
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

// `key` is `prefix`, `length` base62 characters, then the 6 characters that
// append_key_checksum() gives for all that.
bool ref_checksummed(std::string_view key, std::string_view prefix, std::size_t length) {
  constexpr std::size_t kSum = apikeys::KeyFormat::kChecksumLength;
  if (key.size() < kSum || !ref_key(key.substr(0, key.size() - kSum), prefix, length)) {
    return false;
  }
  std::string again(key.substr(0, key.size() - kSum));
  apikeys::append_key_checksum(again);
  return again == key;
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

// A Validator with format = branded("acme") and also_accept = {KeyFormat{}}: a token
// is well formed when both halves are of one of the two formats.
void check_branded_token(std::string_view token) {
  static const apikeys::KeyFormat branded = apikeys::KeyFormat::branded("acme");
  static const std::shared_ptr<CountingStore> store = std::make_shared<CountingStore>();
  static const std::unique_ptr<apikeys::Validator> validator = [] {
    apikeys::ValidatorOptions options;
    options.format = branded;
    options.also_accept = {apikeys::KeyFormat{}};
    options.record_last_use = false;
    return std::make_unique<apikeys::Validator>(store, hasher(), options);
  }();
  store->finds.store(0);
  const auto colon = token.find(':');
  bool well_formed = false;
  if (colon != std::string_view::npos) {
    const std::string_view pk = token.substr(0, colon);
    const std::string_view sk = token.substr(colon + 1);
    well_formed = (ref_checksummed(pk, "acme_pk_", 32) && ref_checksummed(sk, "acme_sk_", 32)) ||
                  (ref_key(pk, "pk_", 32) && ref_key(sk, "sk_", 32));
  }
  const apikeys::ValidationResult r = validator->validate(token);
  FUZZ_CHECK((r.code == ValidationCode::malformed) == !well_formed);
  FUZZ_CHECK(store->finds.load() == (well_formed ? 1 : 0));
  FUZZ_CHECK(!r.ok());
}

// Branded keys made from the input, as a generator makes them (prefix, base62, then
// append_key_checksum), and one from the CSPRNG: accepted whole; with the byte at a
// position the input picks changed to any other value, refused (a CRC-32 catches every
// change of one byte; the checksum characters decode one-to-one; the prefix is compared).
void check_flipped(const std::uint8_t* data, std::size_t size) {
  static const apikeys::KeyFormat branded = apikeys::KeyFormat::branded("acme");
  static const std::string generated = [] {
    apikeys::CsprngKeyGenerator generator;
    return std::string(generator.generate(branded).secret_key.reveal());
  }();
  static constexpr std::string_view kAlphabet =
      "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
  std::string built = branded.public_prefix;
  for (std::size_t i = 0; i < 32; ++i) built += kAlphabet[(i < size ? data[i] : i) % 62];
  apikeys::append_key_checksum(built);
  FUZZ_CHECK(branded.is_public_key(built));
  FUZZ_CHECK(branded.is_secret_key(generated));
  const std::size_t where = size > 32 ? data[32] : size;
  const std::uint8_t change = size > 33 && data[33] != 0 ? data[33] : 0x5A;
  std::string flipped = built;
  flipped[where % flipped.size()] = static_cast<char>(flipped[where % flipped.size()] ^ change);
  FUZZ_CHECK(!branded.is_public_key(flipped));
  std::string flipped_secret = generated;
  char& c = flipped_secret[where % generated.size()];
  c = static_cast<char>(c ^ change);
  FUZZ_CHECK(!branded.is_secret_key(flipped_secret));
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

  // The whole input as a branded key or token: never a crash, and what is accepted
  // carries the checksum append_key_checksum() gives.
  static const apikeys::KeyFormat branded = apikeys::KeyFormat::branded("acme");
  FUZZ_CHECK(branded.is_public_key(whole) == ref_checksummed(whole, "acme_pk_", 32));
  FUZZ_CHECK(branded.is_secret_key(whole) == ref_checksummed(whole, "acme_sk_", 32));
  check_branded_token(whole);
  check_flipped(data, size);

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
    // The same format with a checksum.
    apikeys::KeyFormat summed = format;
    summed.checksum = true;
    FUZZ_CHECK(summed.is_public_key(key) ==
               ref_checksummed(key, summed.public_prefix, summed.length));
    FUZZ_CHECK(summed.is_secret_key(key) ==
               ref_checksummed(key, summed.secret_prefix, summed.length));
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
