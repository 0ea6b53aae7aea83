// Tests of apikeys/hasher.hpp: HmacSha256Hasher against known HMAC-SHA256 vectors,
// its construction rules (the pepper check included), pepper rotation, verify(), and
// use from several threads.
#include <algorithm>
#include <array>
#include <atomic>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

#include <openssl/rand.h>

#include "apikeys/error.hpp"
#include "apikeys/hasher.hpp"
#include "apikeys/key_generator.hpp"
#include "apikeys/types.hpp"
#include "catch.hpp"
#include "test_support.hpp"

using apikeys::Digest;
using apikeys::HmacSha256Hasher;
using apikeys::Pepper;
using apikeys_test::from_hex;
using apikeys_test::kTestPepper;
using apikeys_test::kTestPepper2;
using apikeys_test::to_hex;

namespace {

std::string range_bytes(int first, int last_inclusive) {
  std::string s;
  for (int b = first; b <= last_inclusive; ++b) s.push_back(static_cast<char>(b));
  return s;
}

// RFC 4231 test cases 6 and 7 use a 131-byte key of 0xaa (longer than the SHA-256
// block, so the key is hashed first).
const std::string kRfcKey(131, '\xaa');
constexpr std::string_view kRfc6Data = "Test Using Larger Than Block-Size Key - Hash Key First";
constexpr std::string_view kRfc6Mac =
    "60e431591ee0b67f0d8a26aacbf5b77f8e0bc6213728c5140546040f0ee37f54";
constexpr std::string_view kRfc7Data =
    "This is a test using a larger than block-size key and a larger than block-size data. "
    "The key needs to be hashed before being used by the HMAC algorithm.";
constexpr std::string_view kRfc7Mac =
    "9b09ffa71b942fcb27635fbcd5b0e944bfdc63644f0713938a7f51535c3a35e2";

// Further vectors, each computed with both Python's hmac module and `openssl dgst
// -sha256 -mac HMAC`: keys of exactly 32 (the minimum), 64 (one block: used as is)
// and 65 bytes (one more than a block: hashed first).
const std::string kKey32 = range_bytes(0x01, 0x20);
const std::string kKey64 = range_bytes(0x40, 0x7f);
const std::string kKey65 = range_bytes(0x40, 0x80);
constexpr std::string_view kKey32AbcMac =
    "a21b1f5d4cf4f73a4dd939750f7a066a7f98cc131cb16a6692759021cfab8181";
constexpr std::string_view kKey32EmptyMac =
    "462476a897ddfdbd40d1420e08a5bcfeeb25c3e2ade6a0a9083b327b9ef9fca1";
constexpr std::string_view kSecretData = "sk_0123456789abcdefABCDEF0123456789";
constexpr std::string_view kKey64Mac =
    "80e8bc1ea6274a6334141b3125522f5947fd8067a283db8e4583589c751d11e2";
constexpr std::string_view kKey65Mac =
    "59f8f4335fe2c1d9aeccbc023d65f3075a68a98f4e3ef5635c8546f64697bbe5";

// The message of the Error(invalid_argument) that `peppers` earns, or "" when accepted
// (or refused with another code).
std::string refusal(const std::vector<Pepper>& peppers, std::uint32_t current) {
  try {
    const HmacSha256Hasher h(peppers, current);
  } catch (const apikeys::Error& e) {
    if (e.code() == apikeys::ErrorCode::invalid_argument) return e.what();
  }
  return {};
}

bool refused_with_invalid_argument(const std::vector<Pepper>& peppers, std::uint32_t current) {
  return !refusal(peppers, current).empty();
}

bool same(const Digest& a, const Digest& b) {
  return a.bytes == b.bytes && a.pepper_id == b.pepper_id;
}

}  // namespace

TEST_CASE("HmacSha256Hasher matches RFC 4231 test cases 6 and 7", "[hasher]") {
  // The RFC's key (one byte value 131 times) may not make new digests, so it is a
  // retired pepper here: hash_with and verify use it exactly as hash() would.
  const HmacSha256Hasher h({Pepper{1, kTestPepper}, Pepper{7, kRfcKey}}, 1);
  REQUIRE(h.current_pepper_id() == 1);

  const auto w6 = h.hash_with(kRfc6Data, 7);
  REQUIRE(w6.has_value());
  CHECK(to_hex(w6->bytes) == kRfc6Mac);
  CHECK(w6->pepper_id == 7);
  const auto w7 = h.hash_with(kRfc7Data, 7);
  REQUIRE(w7.has_value());
  CHECK(to_hex(w7->bytes) == kRfc7Mac);

  Digest expected;
  const auto mac = from_hex(kRfc6Mac);
  std::copy(mac.begin(), mac.end(), expected.bytes.begin());
  expected.pepper_id = 7;
  CHECK(h.verify(kRfc6Data, expected));
  CHECK_FALSE(h.verify(kRfc7Data, expected));
}

TEST_CASE("HmacSha256Hasher matches vectors for 32-, 64- and 65-byte keys", "[hasher]") {
  SECTION("32-byte key") {
    const HmacSha256Hasher h(kKey32);
    CHECK(h.current_pepper_id() == 1);
    const Digest d = h.hash("abc");
    CHECK(to_hex(d.bytes) == kKey32AbcMac);
    CHECK(d.pepper_id == 1);
    CHECK(to_hex(h.hash("").bytes) == kKey32EmptyMac);
  }
  SECTION("64-byte key (exactly one block)") {
    const HmacSha256Hasher h(kKey64);
    CHECK(to_hex(h.hash(kSecretData).bytes) == kKey64Mac);
  }
  SECTION("65-byte key (hashed first)") {
    const HmacSha256Hasher h(kKey65);
    CHECK(to_hex(h.hash(kSecretData).bytes) == kKey65Mac);
  }
  SECTION("several peppers: each id uses its own key") {
    const HmacSha256Hasher h({Pepper{1, kKey32}, Pepper{2, kKey64}, Pepper{3, kKey65}}, 2);
    CHECK(h.current_pepper_id() == 2);
    CHECK(to_hex(h.hash(kSecretData).bytes) == kKey64Mac);
    CHECK(h.hash(kSecretData).pepper_id == 2);
    const auto d1 = h.hash_with("abc", 1);
    const auto d3 = h.hash_with(kSecretData, 3);
    REQUIRE(d1.has_value());
    REQUIRE(d3.has_value());
    CHECK(to_hex(d1->bytes) == kKey32AbcMac);
    CHECK(d1->pepper_id == 1);
    CHECK(to_hex(d3->bytes) == kKey65Mac);
    CHECK(d3->pepper_id == 3);
  }
}

TEST_CASE("HmacSha256Hasher refuses bad peppers with invalid_argument", "[hasher]") {
  const std::string p31(31, 'k');
  const std::string p32 = kKey32;
  SECTION("pepper shorter than 32 bytes") {
    REQUIRE_THROWS_AS(HmacSha256Hasher(p31), apikeys::Error);
    bool threw = false;
    try {
      const HmacSha256Hasher h(p31);
    } catch (const apikeys::Error& e) {
      threw = true;
      CHECK(e.code() == apikeys::ErrorCode::invalid_argument);
      // The message may name the rule, never the pepper.
      CHECK(std::string(e.what()).find(p31) == std::string::npos);
    }
    CHECK(threw);
    CHECK(refused_with_invalid_argument({Pepper{1, p31}}, 1));
    CHECK(refused_with_invalid_argument({Pepper{1, p32}, Pepper{2, p31}}, 1));
    CHECK(refused_with_invalid_argument({Pepper{1, ""}}, 1));
    REQUIRE_NOTHROW(HmacSha256Hasher(p32));
  }
  SECTION("empty pepper list") { CHECK(refused_with_invalid_argument({}, 1)); }
  SECTION("duplicate ids") {
    CHECK(refused_with_invalid_argument({Pepper{1, p32}, Pepper{1, kTestPepper}}, 1));
    CHECK(refused_with_invalid_argument({Pepper{1, p32}, Pepper{1, p32}}, 1));
  }
  SECTION("current id missing") {
    CHECK(refused_with_invalid_argument({Pepper{1, p32}, Pepper{2, kTestPepper}}, 3));
    CHECK(refused_with_invalid_argument({Pepper{1, p32}}, 0));
  }
  SECTION("id 0 and large ids are ordinary ids") {
    const HmacSha256Hasher h({Pepper{0, p32}, Pepper{0xffffffffu, kTestPepper}}, 0xffffffffu);
    CHECK(h.current_pepper_id() == 0xffffffffu);
    CHECK(h.hash("x").pepper_id == 0xffffffffu);
    CHECK(h.hash_with("x", 0).has_value());
  }
}

namespace {

std::string repeated(std::string_view block, std::size_t size) {
  std::string s;
  while (s.size() < size) s.push_back(block[s.size() % block.size()]);
  return s;
}

bool contains(std::string_view haystack, std::string_view needle) {
  return haystack.find(needle) != std::string_view::npos;
}

}  // namespace

TEST_CASE("HmacSha256Hasher refuses a current pepper that cannot be random", "[hasher]") {
  constexpr std::string_view kTooFew = "fewer than 8 distinct byte values";
  constexpr std::string_view kHalf = "one byte value in half or more of its bytes";
  constexpr std::string_view kRepeated = "a shorter byte sequence repeated";
  struct Case {
    const char* what;
    std::string bytes;
    std::string_view rule;
  };
  const std::string sixteen = range_bytes(0x41, 0x50);  // 16 distinct bytes
  const std::vector<Case> cases = {
      {"32 zero bytes", std::string(32, '\0'), kTooFew},
      {"32 0xFF bytes", std::string(32, '\xff'), kTooFew},
      {"64 'a'", std::string(64, 'a'), kTooFew},
      {"64 hex zeros, not decoded", std::string(64, '0'), kTooFew},
      {"00 01 repeated", repeated(std::string_view("\x00\x01", 2), 32), kTooFew},
      {"a 2-byte pattern", repeated("ab", 40), kTooFew},
      {"a 4-byte pattern", repeated("\xde\xad\xbe\xef", 32), kTooFew},
      {"four runs of one byte", "aaaaaaaabbbbbbbbccccccccdddddddd", kTooFew},
      // Each of these passes the other rules: only the named one refuses it.
      {"an 8-byte pattern", repeated("01234567", 32), kRepeated},
      {"a 16-byte block twice", sixteen + sixteen, kRepeated},
      {"a 13-byte pattern, cut short", repeated("0123456789abc", 32), kRepeated},
      {"16 bytes padded with zeros", sixteen + std::string(16, '\0'), kHalf},
      {"one byte value in 17 of 32", range_bytes(0x41, 0x4f) + std::string(17, 'z'), kHalf},
  };
  for (const Case& c : cases) {
    INFO(c.what);
    REQUIRE(c.bytes.size() >= 32);
    const std::string single = refusal({Pepper{1, c.bytes}}, 1);
    CHECK(contains(single, c.rule));
    CHECK(contains(single, "pepper 1 "));
    // The message never holds the pepper, raw or hex.
    CHECK_FALSE(contains(single, c.bytes));
    CHECK_FALSE(contains(single, to_hex(c.bytes)));
    CHECK_FALSE(contains(single, c.bytes.substr(0, 8)));
    // The one-pepper constructor applies the same rule.
    CHECK_THROWS_AS(HmacSha256Hasher(c.bytes), apikeys::Error);
    // So does the list, whatever the current pepper's id and position.
    CHECK(contains(refusal({Pepper{1, kTestPepper}, Pepper{9, c.bytes}}, 9), "pepper 9 "));
    CHECK(contains(refusal({Pepper{9, c.bytes}, Pepper{1, kTestPepper}}, 9), c.rule));
  }
}

TEST_CASE("HmacSha256Hasher accepts a pepper just inside each rule", "[hasher]") {
  // Exactly 8 distinct byte values, none in half the bytes, no period.
  CHECK_NOTHROW(HmacSha256Hasher("abcdefghhgfedcbaaceghbdffdbhgeca"));
  // One byte value in 15 of 32 (under half), 17 others.
  CHECK_NOTHROW(HmacSha256Hasher(range_bytes(0x41, 0x51) + std::string(15, '\0')));
  // Period 17 in 32 bytes: longer than half, so not a repeated shorter sequence.
  CHECK_NOTHROW(HmacSha256Hasher(repeated(range_bytes(0x41, 0x51), 32)));
  // The fixed peppers the tests, examples and benchmarks use.
  CHECK_NOTHROW(HmacSha256Hasher(kTestPepper));
  CHECK_NOTHROW(HmacSha256Hasher(kTestPepper2));
  CHECK_NOTHROW(HmacSha256Hasher(kKey32));
}

TEST_CASE("HmacSha256Hasher accepts peppers from a CSPRNG", "[hasher]") {
  constexpr int kEach = 10'000;
  int refused_raw = 0;
  int refused_hex = 0;
  int refused_base62 = 0;
  std::array<std::uint8_t, 32> raw{};
  for (int i = 0; i < kEach; ++i) {
    REQUIRE(RAND_bytes(raw.data(), static_cast<int>(raw.size())) == 1);
    // Raw bytes, as the README's hex-decoded `openssl rand -hex 32`.
    const std::string bytes(raw.begin(), raw.end());
    if (!refusal({Pepper{1, bytes}}, 1).empty()) ++refused_raw;
    // The same as 64 hex characters used without decoding.
    if (!refusal({Pepper{1, to_hex(raw)}}, 1).empty()) ++refused_hex;
    // 43 base62 characters, as the examples make them.
    std::string base62;
    apikeys::append_random_base62(base62, 43);
    if (!refusal({Pepper{1, base62}}, 1).empty()) ++refused_base62;
  }
  CHECK(refused_raw == 0);
  CHECK(refused_hex == 0);
  CHECK(refused_base62 == 0);
}

TEST_CASE("HmacSha256Hasher keeps a retired pepper that fails the check", "[hasher]") {
  // A deployment whose pepper is now refused moves to a new current pepper while the
  // keys it already issued keep verifying under the old one.
  const std::string weak(32, '\0');
  const std::string secret = "sk_retiredretiredretiredretiredre";
  const HmacSha256Hasher h({Pepper{1, weak}, Pepper{2, kTestPepper}}, 2);
  const auto old = h.hash_with(secret, 1);
  REQUIRE(old.has_value());
  CHECK(h.verify(secret, *old));
  CHECK(h.hash(secret).pepper_id == 2);
  // It still may not make new digests.
  CHECK(contains(refusal({Pepper{1, weak}, Pepper{2, kTestPepper}}, 1), "pepper 1 "));
  // And it still needs its 32 bytes.
  CHECK(contains(refusal({Pepper{1, std::string(31, '\0')}, Pepper{2, kTestPepper}}, 2),
                 "at least 32 bytes"));
}

TEST_CASE("HmacSha256Hasher copies its peppers", "[hasher]") {
  std::string pepper(kKey32);
  const HmacSha256Hasher h(pepper);
  pepper.assign(pepper.size(), 'x');
  pepper.clear();
  pepper.shrink_to_fit();
  CHECK(to_hex(h.hash("abc").bytes) == kKey32AbcMac);
}

TEST_CASE("HmacSha256Hasher digests depend on every byte of the secret", "[hasher]") {
  const HmacSha256Hasher h(kTestPepper);
  const std::string secret = "sk_ABCDEFGHIJKLMNOPQRSTUVWXYZ012345";
  const Digest base = h.hash(secret);
  CHECK(h.verify(secret, base));
  for (std::size_t i = 0; i < secret.size(); ++i) {
    std::string s = secret;
    s[i] = static_cast<char>(s[i] ^ 0x01);
    CHECK(h.hash(s).bytes != base.bytes);
    CHECK_FALSE(h.verify(s, base));
  }
  // Length matters: a prefix or an extension is a different secret.
  CHECK(h.hash(secret.substr(0, secret.size() - 1)).bytes != base.bytes);
  CHECK(h.hash(secret + "A").bytes != base.bytes);
  // Embedded NUL is part of the secret, not a terminator.
  CHECK(h.hash(secret + std::string(1, '\0')).bytes != base.bytes);
  // Deterministic.
  CHECK(same(h.hash(secret), base));
  // The key matters.
  const HmacSha256Hasher other(kTestPepper2);
  CHECK(other.hash(secret).bytes != base.bytes);
}

TEST_CASE("HmacSha256Hasher::verify is false for any mismatch", "[hasher]") {
  const HmacSha256Hasher h({Pepper{1, kTestPepper}, Pepper{2, kTestPepper2}}, 1);
  const std::string secret = "sk_verifyverifyverifyverifyverify01";
  const Digest d = h.hash(secret);
  REQUIRE(h.verify(secret, d));

  SECTION("wrong secret") {
    CHECK_FALSE(h.verify("sk_verifyverifyverifyverifyverify02", d));
    CHECK_FALSE(h.verify("", d));
  }
  SECTION("tampered digest, first and last byte") {
    Digest t = d;
    t.bytes[0] ^= 0x01;
    CHECK_FALSE(h.verify(secret, t));
    t = d;
    t.bytes[31] ^= 0x80;
    CHECK_FALSE(h.verify(secret, t));
  }
  SECTION("unknown pepper id") {
    Digest t = d;
    t.pepper_id = 99;
    CHECK_FALSE(h.verify(secret, t));
    t.pepper_id = 0;
    CHECK_FALSE(h.verify(secret, t));
  }
  SECTION("right bytes, other known pepper id") {
    Digest t = d;
    t.pepper_id = 2;
    CHECK_FALSE(h.verify(secret, t));
  }
  SECTION("all-zero digest") { CHECK_FALSE(h.verify(secret, Digest{})); }
}

TEST_CASE("HmacSha256Hasher::hash_with an unknown id is nullopt", "[hasher]") {
  const HmacSha256Hasher h({Pepper{1, kTestPepper}, Pepper{2, kTestPepper2}}, 2);
  CHECK_FALSE(h.hash_with("sk_x", 3).has_value());
  CHECK_FALSE(h.hash_with("sk_x", 0).has_value());
  CHECK_FALSE(h.hash_with("sk_x", 0xffffffffu).has_value());
  const auto d2 = h.hash_with("sk_x", 2);
  REQUIRE(d2.has_value());
  CHECK(same(*d2, h.hash("sk_x")));
}

TEST_CASE("HmacSha256Hasher pepper rotation", "[hasher]") {
  const std::string secret = "sk_rotationrotationrotationrotati";
  const HmacSha256Hasher a({Pepper{1, kTestPepper}}, 1);
  const Digest from_a = a.hash(secret);
  REQUIRE(from_a.pepper_id == 1);

  const HmacSha256Hasher b({Pepper{1, kTestPepper}, Pepper{2, kTestPepper2}}, 2);
  CHECK(b.current_pepper_id() == 2);
  // Keys made before the rotation still verify.
  CHECK(b.verify(secret, from_a));
  CHECK_FALSE(b.verify("sk_rotationrotationrotationrotatX", from_a));
  // New digests use the new pepper and differ from the old ones.
  const Digest from_b = b.hash(secret);
  CHECK(from_b.pepper_id == 2);
  CHECK(from_b.bytes != from_a.bytes);
  CHECK(b.verify(secret, from_b));
  // The old hasher knows nothing of pepper 2.
  CHECK_FALSE(a.verify(secret, from_b));
  CHECK_FALSE(a.hash_with(secret, 2).has_value());
  // hash_with(1) on the new hasher reproduces the old digest exactly.
  const auto again = b.hash_with(secret, 1);
  REQUIRE(again.has_value());
  CHECK(same(*again, from_a));

  SECTION("pepper order in the list does not matter") {
    const HmacSha256Hasher c({Pepper{2, kTestPepper2}, Pepper{1, kTestPepper}}, 2);
    CHECK(same(c.hash(secret), from_b));
    CHECK(c.verify(secret, from_a));
  }
  SECTION("after retiring pepper 1, old digests no longer verify") {
    const HmacSha256Hasher d({Pepper{2, kTestPepper2}}, 2);
    CHECK_FALSE(d.verify(secret, from_a));
    CHECK(d.verify(secret, from_b));
  }
}

TEST_CASE("HmacSha256Hasher through the Hasher interface", "[hasher]") {
  const std::unique_ptr<apikeys::Hasher> h = std::make_unique<HmacSha256Hasher>(kKey32);
  CHECK(to_hex(h->hash("abc").bytes) == kKey32AbcMac);
  CHECK(h->verify("abc", h->hash("abc")));
}

TEST_CASE("HmacSha256Hasher gives the same digests from 4 threads", "[hasher][threads]") {
  const HmacSha256Hasher h({Pepper{1, kTestPepper}, Pepper{2, kTestPepper2}}, 2);
  constexpr std::size_t kCount = 10'000;
  std::vector<std::string> secrets;
  secrets.reserve(kCount);
  for (std::size_t i = 0; i < kCount; ++i) {
    // Varying lengths cross the 55/56/64-byte padding boundaries of SHA-256.
    secrets.push_back("sk_" + std::to_string(i * 2654435761u) + std::string(i % 80, 'q'));
  }
  std::vector<Digest> expected;
  std::vector<Digest> expected_old;
  expected.reserve(kCount);
  expected_old.reserve(kCount);
  for (const auto& s : secrets) {
    expected.push_back(h.hash(s));
    expected_old.push_back(*h.hash_with(s, 1));
  }

  // Strides coprime with kCount, so every thread visits every secret.
  static constexpr std::array<std::size_t, 4> kStride = {1, 3, 7, 9};
  std::atomic<std::size_t> mismatches{0};
  std::atomic<std::size_t> failures{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&, t]() {
      const auto ut = static_cast<std::size_t>(t);
      try {
        for (std::size_t n = 0; n < kCount; ++n) {
          // Each thread walks in a different order so they contend on different work.
          const std::size_t i = (n * kStride[ut] + 97 * ut) % kCount;
          if (!same(h.hash(secrets[i]), expected[i])) ++mismatches;
          if (t % 2 == 1) {
            const auto old = h.hash_with(secrets[i], 1);
            if (!old || !same(*old, expected_old[i])) ++mismatches;
            if (!h.verify(secrets[i], expected_old[i])) ++mismatches;
          }
        }
      } catch (...) {
        ++failures;
      }
    });
  }
  for (auto& th : threads) th.join();
  CHECK(failures.load() == 0);
  CHECK(mismatches.load() == 0);
}

TEST_CASE("HmacSha256Hasher verifies under a legacy pepper and never hashes with it",
          "[hasher][legacy]") {
  const std::string current = kKey32;  // 32 distinct bytes: passes the current-pepper check
  const std::vector<apikeys::Pepper> peppers{{7, current}};
  // Python: hmac.new(b"change-me", sk.encode(), hashlib.sha256).hexdigest()
  const std::string sk = "sk_aB3aB3aB3aB3aB3aB3aB3aB3aB3aB3xy";
  const HmacSha256Hasher h(peppers, 7, "change-me");
  CHECK(h.current_pepper_id() == 7);
  CHECK(h.hash(sk).pepper_id == 7);
  CHECK(h.legacy_pepper_is_short());
  CHECK(h.pepper_ids() == std::vector<std::uint32_t>{7, apikeys::kLegacyPepperId});

  Digest stored;
  stored.pepper_id = apikeys::kLegacyPepperId;
  const auto mac = from_hex("10f438f3c1399cba703fdcefb41b28b9a48d4f42f6b27389f6da47d2755fa26c");
  std::copy(mac.begin(), mac.end(), stored.bytes.begin());
  CHECK(h.verify(sk, stored));
  CHECK_FALSE(h.verify(sk.substr(0, sk.size() - 1) + "z", stored));
  const auto with = h.hash_with(sk, apikeys::kLegacyPepperId);
  REQUIRE(with);
  CHECK(apikeys::constant_time_equal(*with, stored));

  SECTION("a legacy pepper longer than a SHA-256 block is hashed first, as HMAC says") {
    const HmacSha256Hasher long_legacy(peppers, 7, std::string(100, 'L'));
    CHECK_FALSE(long_legacy.legacy_pepper_is_short());
    CHECK(to_hex(long_legacy.hash_with(sk, apikeys::kLegacyPepperId)->bytes) ==
          "9622c1cf2dd973dbc53cb2d2e8b2a7d982441f641a9ef3dbab18ae7971cb73fb");
  }
  SECTION("empty, oversized or clashing legacy peppers are refused") {
    CHECK_THROWS_AS(HmacSha256Hasher(peppers, 7, ""), apikeys::Error);
    CHECK_THROWS_AS(HmacSha256Hasher(peppers, 7, std::string(4097, 'x')), apikeys::Error);
    const std::vector<apikeys::Pepper> clash{{apikeys::kLegacyPepperId, current}};
    CHECK_THROWS_AS(HmacSha256Hasher(clash, apikeys::kLegacyPepperId, "change-me"), apikeys::Error);
  }
  SECTION("without a legacy pepper its id is an ordinary id, and unknown") {
    const HmacSha256Hasher plain(peppers, 7);
    CHECK_FALSE(plain.verify(sk, stored));
    CHECK_FALSE(plain.legacy_pepper_is_short());
  }
}
