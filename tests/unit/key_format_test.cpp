// Tests of the checksummed key format (KeyFormat::checksum, KeyFormat::branded) and of
// the Validator's format step with several formats (ValidatorOptions::also_accept):
// CRC-32 and base62 checksum characters against zlib's values, brand rules, single
// character changes, a generator that leaves the checksum out, and a bad checksum that
// must cost no store read and no cache call.
#include <cstddef>
#include <cstdint>
#include <memory>
#include <random>
#include <string>
#include <string_view>
#include <vector>

#include "apikeys/error.hpp"
#include "apikeys/hasher.hpp"
#include "apikeys/key_generator.hpp"
#include "apikeys/key_manager.hpp"
#include "apikeys/memory_store.hpp"
#include "apikeys/validator.hpp"
#include "catch.hpp"
#include "crc32.hpp"
#include "store_doubles.hpp"
#include "test_support.hpp"

using apikeys::Error;
using apikeys::ErrorCode;
using apikeys::KeyFormat;
using apikeys::ValidationCode;

namespace {

constexpr std::string_view kBase62 =
    "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";

// Six base62 digits of `v`, most significant first (v < 62^6); unlike the library's
// encoder it takes values above 32 bits, to forge checksums that only a 32-bit
// truncation would accept.
std::string base62_6(std::uint64_t v) {
  std::string out(6, '0');
  for (int i = 5; i >= 0; --i) {
    out[static_cast<std::size_t>(i)] = kBase62[v % 62];
    v /= 62;
  }
  return out;
}

std::string encode(std::uint32_t crc) {
  std::string out(6, '\0');
  apikeys::detail::encode_checksum(crc, out.data());
  return out;
}

// Refuses an Error(invalid_argument) whose message repeats `brand`.
void expect_bad_brand(const std::string& brand) {
  INFO("brand \"" << brand << "\"");
  try {
    (void)KeyFormat::branded(brand);
    FAIL("accepted");
  } catch (const Error& e) {
    CHECK(e.code() == ErrorCode::invalid_argument);
    // (A one-letter brand may well occur in any sentence.)
    if (brand.size() >= 2) CHECK(std::string(e.what()).find(brand) == std::string::npos);
  }
}

// Every single-character change of `key` (each position; each other base62 character,
// or every `stride`-th of them; and two bytes that are not base62) is refused by
// `accepts`.
template <typename Accepts>
void expect_every_change_refused(const std::string& key, Accepts accepts, std::size_t stride) {
  std::size_t tried = 0;
  for (std::size_t i = 0; i < key.size(); ++i) {
    std::string changed = key;
    for (std::size_t k = i % stride; k < kBase62.size(); k += stride) {
      if (kBase62[k] == key[i]) continue;
      changed[i] = kBase62[k];
      INFO("position " << i << " -> " << kBase62[k]);
      CHECK_FALSE(accepts(changed));
      ++tried;
    }
    for (char c : {'-', '\xC3'}) {
      changed[i] = c;
      CHECK_FALSE(accepts(changed));
    }
  }
  CHECK(tried >= key.size() * (61 / stride - 1));
}

// A generator that makes the right prefixes and lengths but never appends the checksum.
class NoChecksumGenerator final : public apikeys::KeyGenerator {
 public:
  apikeys::KeyPair generate(const KeyFormat& format) override {
    apikeys::KeyPair pair;
    pair.public_key = format.public_prefix;
    apikeys::append_random_base62(pair.public_key, format.length + KeyFormat::kChecksumLength);
    std::string secret = format.secret_prefix;
    apikeys::append_random_base62(secret, format.length + KeyFormat::kChecksumLength);
    pair.secret_key = apikeys::SecretString(secret);
    return pair;
  }
};

}  // namespace

TEST_CASE("CRC-32 matches zlib's crc32()", "[key_format]") {
  using apikeys::detail::crc32;
  CHECK(crc32(0, "123456789") == 0xCBF43926U);  // the standard check value
  CHECK(crc32(0, "") == 0U);
  // Continuation: crc32(crc32(0, a), b) == crc32(0, a + b), whatever the split.
  const std::string text = "acme_pk_0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ-and-more-bytes";
  for (std::size_t cut = 0; cut <= text.size(); ++cut) {
    const std::string_view a = std::string_view(text).substr(0, cut);
    const std::string_view b = std::string_view(text).substr(cut);
    CHECK(crc32(crc32(0, a), b) == crc32(0, text));
  }
  // Values from python3: zlib.crc32(s.encode()) for each s.
  CHECK(crc32(0, "acme_pk_0123456789ABCDEFGHIJKLMNOPQRSTUV") == 0x5C7E382CU);
  CHECK(crc32(0, "acme_sk_abcdefghijklmnopqrstuvwxyz012345") == 0xE9D3DB3AU);
  CHECK(crc32(0, "pk_live_zzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzz") == 0x0825AB41U);
  CHECK(crc32(0, "x9_sk_" + std::string(32, '0')) == 0x3813E6A6U);
}

TEST_CASE("checksum characters encode and decode", "[key_format]") {
  using apikeys::detail::decode_checksum;
  CHECK(encode(0) == "000000");
  CHECK(encode(1) == "000001");
  CHECK(encode(0xFFFFFFFFU) == "4gfFC3");
  for (std::uint32_t v : {0U, 1U, 61U, 62U, 0x7FFFFFFFU, 0xCBF43926U, 0xFFFFFFFFU}) {
    CHECK(decode_checksum(encode(v).c_str()) == v);
  }
  // Above 32 bits, or not base62: never a CRC.
  CHECK(decode_checksum("4gfFC4") == 0x100000000ULL);
  CHECK(decode_checksum("zzzzzz") > 0xFFFFFFFFULL);
  CHECK(decode_checksum("00000-") > 0xFFFFFFFFULL);
  CHECK(decode_checksum("\xFF"
                        "00000") > 0xFFFFFFFFULL);
  CHECK(decode_checksum("zzzzz_") > 0xFFFFFFFFULL);
}

TEST_CASE("base62_mask16 accepts exactly the 62 characters", "[key_format]") {
#if defined(__SSE2__)
  for (int b = 0; b < 256; ++b) {
    const char c = static_cast<char>(b);
    const bool base62 = kBase62.find(c) != std::string_view::npos;
    for (int lane = 0; lane < 16; ++lane) {
      std::string block(16, 'a');
      block[static_cast<std::size_t>(lane)] = c;
      INFO("byte " << b << " in lane " << lane);
      CHECK((apikeys::detail::base62_mask16(block.data()) == 0xFFFF) == base62);
    }
  }
#else
  SUCCEED("no SSE2");
#endif
}

TEST_CASE("checksummed bodies of every length agree with the tables", "[key_format]") {
  // checksummed_body_ok folds 16 bytes at a time where the CPU can: check every length
  // the formats allow against the table CRC, and that a changed byte is refused.
  std::mt19937 rng(7);
  for (std::size_t length = 16; length <= 128; ++length) {
    std::string body;
    for (std::size_t i = 0; i < length; ++i) body += kBase62[rng() % 62];
    const std::string prefix = "pre_" + std::to_string(length) + "_";
    const std::uint32_t prefix_crc = apikeys::detail::crc32(0, prefix);
    body += encode(apikeys::detail::crc32(0, prefix + body));
    INFO("length " << length);
    CHECK(apikeys::detail::checksummed_body_ok(body.data(), length, prefix_crc));
    for (std::size_t i = 0; i < body.size(); i += 5) {
      std::string changed = body;
      changed[i] = changed[i] == 'x' ? 'y' : 'x';
      CHECK_FALSE(apikeys::detail::checksummed_body_ok(changed.data(), length, prefix_crc));
    }
    CHECK_FALSE(apikeys::detail::checksummed_body_ok(body.data(), length, prefix_crc ^ 1U));
  }
}

TEST_CASE("32-character checksummed bodies agree with the tables under any prefix",
          "[key_format]") {
  // 32 characters (the branded format's length) take a path of their own, where each
  // 4-byte word is multiplied by its own constant: a wrong constant would show for some
  // words and prefixes only, so many of both are tried, and every single change.
  std::mt19937 rng(32);
  for (int round = 0; round < 2000; ++round) {
    std::string body;
    for (std::size_t i = 0; i < 32; ++i) body += kBase62[rng() % 62];
    const std::string prefix = "p" + std::to_string(rng()) + "_";
    const std::uint32_t prefix_crc = apikeys::detail::crc32(0, prefix);
    body += encode(apikeys::detail::crc32(0, prefix + body));
    INFO("round " << round);
    REQUIRE(apikeys::detail::checksummed_body_ok(body.data(), 32, prefix_crc));
    const std::size_t at = rng() % body.size();
    std::string changed = body;
    changed[at] = kBase62[(std::string_view(kBase62).find(body[at]) + 1 + rng() % 61) % 62];
    CHECK_FALSE(apikeys::detail::checksummed_body_ok(changed.data(), 32, prefix_crc));
    CHECK_FALSE(
        apikeys::detail::checksummed_body_ok(body.data(), 32, prefix_crc ^ (1U << (round % 32))));
  }
}

TEST_CASE("KeyFormat::branded: brand rules and prefixes", "[key_format]") {
  const KeyFormat f = KeyFormat::branded("acme");
  CHECK(f.public_prefix == "acme_pk_");
  CHECK(f.secret_prefix == "acme_sk_");
  CHECK(f.length == 32);
  CHECK(f.checksum);
  CHECK(f.public_key_size() == 4 + 4 + 32 + 6);
  CHECK_NOTHROW(f.check());

  CHECK_NOTHROW(KeyFormat::branded("ab"));
  CHECK_NOTHROW(KeyFormat::branded("0123456789abcdef"));  // 16
  CHECK_NOTHROW(KeyFormat::branded("x9"));
  for (const std::string& bad :
       std::vector<std::string>{"AB", "a", "0123456789abcdefg", "a_b", "", "Acme", "ac me",
                                "acm\xC3\xA9", std::string("ab\0c", 4), "Leaked_Brand"}) {
    expect_bad_brand(bad);
  }
  // Never a bare "sk_" (or "pk_"): a branded prefix always carries its brand.
  for (const std::string_view brand : {"ab", "sk", "pk", "0123456789abcdef"}) {
    const KeyFormat b = KeyFormat::branded(brand);
    CHECK(b.secret_prefix != "sk_");
    CHECK(b.public_prefix != "pk_");
    CHECK(b.secret_prefix.size() == brand.size() + 4);
  }
}

TEST_CASE("known checksummed keys are accepted, and nothing close to them", "[key_format]") {
  const KeyFormat f = KeyFormat::branded("acme");
  // Checksums from python3: base 62 of zlib.crc32(key[:-6].encode()), 6 digits.
  const std::string pk = "acme_pk_0123456789ABCDEFGHIJKLMNOPQRSTUV1h15lk";
  const std::string sk = "acme_sk_abcdefghijklmnopqrstuvwxyz0123454HUP98";
  CHECK(f.is_public_key(pk));
  CHECK(f.is_secret_key(sk));
  CHECK_FALSE(f.is_secret_key(pk));
  CHECK_FALSE(f.is_public_key(sk));
  CHECK(KeyFormat::branded("x9").is_secret_key("x9_sk_" + std::string(32, '0') + "11fcQQ"));

  // A custom checksummed format, 40 characters (not a multiple of 16).
  KeyFormat live;
  live.public_prefix = "pk_live_";
  live.secret_prefix = "sk_live_";
  live.length = 40;
  live.checksum = true;
  CHECK(live.is_public_key("pk_live_zzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzz09FWNN"));
  CHECK_FALSE(live.is_public_key("pk_live_zzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzz09FWNM"));

  // Without its checksum, or with one too many characters, it is another shape.
  CHECK_FALSE(f.is_public_key(pk.substr(0, pk.size() - 6)));
  CHECK_FALSE(f.is_public_key(pk + "0"));
  CHECK_FALSE(f.is_public_key(pk.substr(0, pk.size() - 1)));
  // The same key without a checksum format is not a legacy key either.
  CHECK_FALSE(KeyFormat{}.is_public_key(pk));
}

TEST_CASE("a checksum that decodes above 2^32 is refused", "[key_format]") {
  const KeyFormat f = KeyFormat::branded("acme");
  const std::string body = "acme_pk_0123456789ABCDEFGHIJKLMNOPQRSTUV";
  const std::uint64_t crc = apikeys::detail::crc32(0, body);
  REQUIRE(f.is_public_key(body + base62_6(crc)));
  // The same CRC plus 2^32 (and 2^33): right modulo 2^32, but not the number.
  CHECK_FALSE(f.is_public_key(body + base62_6(crc + (std::uint64_t{1} << 32))));
  CHECK_FALSE(f.is_public_key(body + base62_6(crc + (std::uint64_t{1} << 33))));
  CHECK_FALSE(f.is_public_key(body + "zzzzzz"));
}

TEST_CASE("generated checksummed keys are accepted, every one-character change is refused",
          "[key_format]") {
  apikeys::CsprngKeyGenerator generator;
  KeyFormat live;
  live.public_prefix = "pk_live_";
  live.secret_prefix = "sk_live_";
  live.length = 40;
  live.checksum = true;
  for (const KeyFormat& f : {KeyFormat::branded("acme"), KeyFormat::branded("x9"), live}) {
    for (int n = 0; n < 4; ++n) {
      const apikeys::KeyPair pair = generator.generate(f);
      const std::string sk(pair.secret_key.reveal());
      REQUIRE(f.is_public_key(pair.public_key));
      REQUIRE(f.is_secret_key(sk));
      REQUIRE(pair.public_key.size() == f.public_key_size());
      // Every substitute for the first key, every 7th (rotating) for the others.
      const std::size_t stride = n == 0 ? 1 : 7;
      expect_every_change_refused(
          pair.public_key, [&](const std::string& k) { return f.is_public_key(k); }, stride);
      expect_every_change_refused(
          sk, [&](const std::string& k) { return f.is_secret_key(k); }, stride);
    }
  }
}

TEST_CASE("a generator that leaves the checksum out makes create() throw, writing nothing",
          "[key_format]") {
  apikeys::KeyManagerOptions options;
  options.validation.format = KeyFormat::branded("acme");
  options.validation.record_last_use = false;
  options.generator = std::make_shared<NoChecksumGenerator>();
  auto store = std::make_shared<apikeys::MemoryStore>();
  auto hasher = std::make_shared<apikeys::HmacSha256Hasher>(apikeys_test::kTestPepper);
  apikeys::KeyManager manager(store, hasher, options);
  const apikeys::Uuid account = apikeys_test::account_id(1);
  try {
    (void)manager.create(account, apikeys::CreateRequest("k"));
    FAIL("create accepted keys without a checksum");
  } catch (const Error& e) {
    CHECK(e.code() == ErrorCode::crypto);
  }
  CHECK(store->list(account).empty());
}

TEST_CASE("also_accept: branded keys issued, legacy keys still valid, no mixing", "[key_format]") {
  auto store = std::make_shared<apikeys::MemoryStore>();
  auto hasher = std::make_shared<apikeys::HmacSha256Hasher>(apikeys_test::kTestPepper);
  const apikeys::Uuid account = apikeys_test::account_id(2);

  apikeys::KeyManagerOptions legacy_options;
  legacy_options.validation.record_last_use = false;
  apikeys::KeyManager legacy_manager(store, hasher, legacy_options);
  const apikeys::CreatedKey old_key = legacy_manager.create(account, apikeys::CreateRequest("old"));
  REQUIRE(KeyFormat{}.is_public_key(old_key.info.public_key));

  apikeys::KeyManagerOptions options;
  options.validation.format = KeyFormat::branded("acme");
  options.validation.also_accept = {KeyFormat{}};
  options.validation.record_last_use = false;
  apikeys::KeyManager manager(store, hasher, options);
  const apikeys::CreatedKey new_key = manager.create(account, apikeys::CreateRequest("new"));
  CHECK(options.validation.format.is_public_key(new_key.info.public_key));
  CHECK(options.validation.format.is_secret_key(new_key.secret_key.reveal()));

  apikeys::Validator validator(store, hasher, options.validation);
  CHECK(validator.validate(new_key.info.public_key, new_key.secret_key.reveal()).ok());
  CHECK(validator.validate(old_key.info.public_key, old_key.secret_key.reveal()).ok());
  // A branded public key with a legacy secret, and the other way round: malformed.
  CHECK(validator.validate(new_key.info.public_key, old_key.secret_key.reveal()).code ==
        ValidationCode::malformed);
  CHECK(validator.validate(old_key.info.public_key, new_key.secret_key.reveal()).code ==
        ValidationCode::malformed);
  // The token form too.
  const std::string token =
      new_key.info.public_key + ":" + std::string(new_key.secret_key.reveal());
  CHECK(validator.validate(token).ok());

  // rotate() issues the first format as well.
  const apikeys::CreatedKey rotated =
      manager.rotate(account, old_key.info.key_id, apikeys::RotateRequest{});
  CHECK(options.validation.format.is_public_key(rotated.info.public_key));
  CHECK(options.validation.format.is_secret_key(rotated.secret_key.reveal()));
  CHECK(validator.validate(rotated.info.public_key, rotated.secret_key.reveal()).ok());

  // A validator of the legacy format alone refuses branded keys as malformed.
  apikeys::Validator legacy_validator(store, hasher, legacy_options.validation);
  CHECK(legacy_validator.validate(new_key.info.public_key, new_key.secret_key.reveal()).code ==
        ValidationCode::malformed);
}

TEST_CASE("a bad checksum is malformed with no store read and no cache call", "[key_format]") {
  auto store = std::make_shared<apikeys_test::InstrumentedStore>();
  auto cache = std::make_shared<apikeys_test::CountingCache>();
  auto hasher = std::make_shared<apikeys::HmacSha256Hasher>(apikeys_test::kTestPepper);
  apikeys::KeyManagerOptions options;
  options.validation.format = KeyFormat::branded("acme");
  options.validation.also_accept = {KeyFormat{}};
  options.validation.cache = cache;
  options.validation.record_last_use = false;
  apikeys::KeyManager manager(store, hasher, options);
  const apikeys::CreatedKey key =
      manager.create(apikeys_test::account_id(3), apikeys::CreateRequest("k"));
  const std::string pk = key.info.public_key;
  const std::string sk(key.secret_key.reveal());
  apikeys::Validator validator(store, hasher, options.validation);

  // The last checksum character of either key changed: the right shape, a wrong sum.
  auto bump = [](std::string k) {
    char& c = k.back();
    c = c == 'z' ? '0' : c == '9' ? 'A' : c == 'Z' ? 'a' : static_cast<char>(c + 1);
    return k;
  };
  store->finds = 0;
  cache->reset();
  CHECK(validator.validate(bump(pk), sk).code == ValidationCode::malformed);
  CHECK(validator.validate(pk, bump(sk)).code == ValidationCode::malformed);
  CHECK(validator.validate(bump(pk) + ":" + sk).code == ValidationCode::malformed);
  CHECK(store->finds.load() == 0);
  CHECK(cache->calls() == 0);

  // The untouched pair does reach them.
  CHECK(validator.validate(pk, sk).ok());
  CHECK(store->finds.load() == 1);
  CHECK(cache->gets.load() == 1);
}

TEST_CASE("a Validator refuses a bad format in also_accept", "[key_format]") {
  auto store = std::make_shared<apikeys::MemoryStore>();
  auto hasher = std::make_shared<apikeys::HmacSha256Hasher>(apikeys_test::kTestPepper);
  apikeys::ValidatorOptions options;
  options.record_last_use = false;
  options.format = KeyFormat::branded("acme");
  KeyFormat bad;
  bad.length = 8;  // below 22
  options.also_accept = {KeyFormat{}, bad};
  try {
    const apikeys::Validator v(store, hasher, options);
    FAIL("accepted a bad format");
  } catch (const Error& e) {
    CHECK(e.code() == ErrorCode::invalid_argument);
  }
  KeyFormat same_prefixes;
  same_prefixes.secret_prefix = same_prefixes.public_prefix;
  options.also_accept = {same_prefixes};
  CHECK_THROWS_AS(apikeys::Validator(store, hasher, options), Error);
}

TEST_CASE("a well-formed public key with a default (null) secret view is malformed",
          "[key_format]") {
  // std::string_view{} has a null data(): the format step must not offset it (undefined
  // behaviour that the clang UBSan build reports) before it has checked the size.
  auto store = std::make_shared<apikeys::MemoryStore>();
  auto hasher = std::make_shared<apikeys::HmacSha256Hasher>(apikeys_test::kTestPepper);
  for (const KeyFormat& format : {KeyFormat{}, KeyFormat::branded("acme")}) {
    apikeys::ValidatorOptions options;
    options.format = format;
    options.record_last_use = false;
    options.rehash_on_use = false;
    apikeys::Validator validator(store, hasher, options);
    apikeys::CsprngKeyGenerator generator;
    const apikeys::KeyPair pair = generator.generate(format);
    CHECK(validator.validate(pair.public_key, std::string_view{}).code ==
          ValidationCode::malformed);
  }
}
