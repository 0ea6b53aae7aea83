// Tests of apikeys/key_generator.hpp: KeyFormat rules, the shape of generated keys,
// their uniqueness and the uniformity of their characters.
#include <array>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <unordered_set>
#include <vector>

#include "apikeys/error.hpp"
#include "apikeys/key_generator.hpp"
#include "catch.hpp"

using apikeys::CsprngKeyGenerator;
using apikeys::KeyFormat;

namespace {

constexpr std::string_view kBase62 =
    "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";

bool is_base62(char c) {
  return (c >= '0' && c <= '9') || (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z');
}

bool all_base62(std::string_view s) {
  for (char c : s) {
    if (!is_base62(c)) return false;
  }
  return true;
}

bool starts_with(std::string_view s, std::string_view prefix) {
  return s.substr(0, prefix.size()) == prefix;
}

// Index of `c` in kBase62, or -1.
int base62_index(char c) {
  const auto pos = kBase62.find(c);
  return pos == std::string_view::npos ? -1 : static_cast<int>(pos);
}

// Pearson's chi-square statistic of `counts` against a uniform distribution.
double chi_square_uniform(const std::array<std::uint64_t, 62>& counts) {
  std::uint64_t total = 0;
  for (auto c : counts) total += c;
  const double expected = static_cast<double>(total) / 62.0;
  double stat = 0.0;
  for (auto c : counts) {
    const double d = static_cast<double>(c) - expected;
    stat += d * d / expected;
  }
  return stat;
}

// chi-square(df = 61) upper quantiles (Wilson-Hilferty): p = 1e-4 -> ~111,
// p = 1e-6 -> ~129. A correct generator fails the first about once in 10,000 runs.
constexpr double kChi2Df61P1e4 = 111.0;
constexpr double kChi2Df61P1e6 = 129.0;

KeyFormat live_format() {
  KeyFormat f;
  f.public_prefix = "pk_live_";
  f.secret_prefix = "sk_live_";
  f.length = 40;
  return f;
}

}  // namespace

TEST_CASE("KeyFormat defaults are pk_/sk_ and 32 characters", "[key_generator]") {
  const KeyFormat f;
  CHECK(f.public_prefix == "pk_");
  CHECK(f.secret_prefix == "sk_");
  CHECK(f.length == 32);
  REQUIRE_NOTHROW(f.check());
}

TEST_CASE("KeyFormat::check accepts the documented range", "[key_generator]") {
  KeyFormat f;
  SECTION("length 22 and 128") {
    f.length = 22;
    REQUIRE_NOTHROW(f.check());
    f.length = 128;
    REQUIRE_NOTHROW(f.check());
  }
  SECTION("prefixes of 1 and 32 characters of [A-Za-z0-9_]") {
    f.public_prefix = "p";
    f.secret_prefix = "s";
    REQUIRE_NOTHROW(f.check());
    f.public_prefix = std::string(31, 'a') + "P";
    f.secret_prefix = std::string(31, 'a') + "S";
    REQUIRE(f.public_prefix.size() == 32);
    REQUIRE_NOTHROW(f.check());
    f.public_prefix = "Az09_";
    f.secret_prefix = "_90zA";
    REQUIRE_NOTHROW(f.check());
  }
  SECTION("live prefixes") { REQUIRE_NOTHROW(live_format().check()); }
}

TEST_CASE("KeyFormat::check refuses bad formats with invalid_argument", "[key_generator]") {
  KeyFormat f;
  auto refused = [&f]() {
    try {
      f.check();
    } catch (const apikeys::Error& e) {
      return e.code() == apikeys::ErrorCode::invalid_argument;
    }
    return false;
  };
  SECTION("empty prefixes") {
    f.public_prefix = "";
    CHECK(refused());
    f.public_prefix = "pk_";
    f.secret_prefix = "";
    CHECK(refused());
  }
  SECTION("equal prefixes") {
    f.secret_prefix = f.public_prefix;
    CHECK(refused());
  }
  SECTION("forbidden characters in a prefix") {
    for (const char* bad : {"pk:", "pk-", "pk ", "pk.", "pk/", "p\xc3\xa9", "pk\n"}) {
      f = KeyFormat();
      f.public_prefix = bad;
      CHECK(refused());
      f = KeyFormat();
      f.secret_prefix = bad;
      CHECK(refused());
    }
    f = KeyFormat();
    f.public_prefix = std::string("pk\0", 3);
    CHECK(refused());
  }
  SECTION("prefix of 33 characters") {
    f.public_prefix = std::string(33, 'p');
    CHECK(refused());
  }
  SECTION("length out of range") {
    f.length = 21;
    CHECK(refused());
    f.length = 129;
    CHECK(refused());
    f.length = 0;
    CHECK(refused());
    f.length = static_cast<std::size_t>(-1);
    CHECK(refused());
  }
}

TEST_CASE("KeyFormat::is_public_key / is_secret_key", "[key_generator]") {
  const KeyFormat f;
  const std::string body(32, 'A');
  const std::string pk = "pk_" + body;
  const std::string sk = "sk_" + body;
  CHECK(f.is_public_key(pk));
  CHECK(f.is_secret_key(sk));
  CHECK(f.is_public_key("pk_" + std::string(kBase62.substr(0, 32))));
  CHECK(f.is_secret_key("sk_" + std::string(kBase62.substr(30, 32))));

  SECTION("the other kind's prefix") {
    CHECK_FALSE(f.is_public_key(sk));
    CHECK_FALSE(f.is_secret_key(pk));
  }
  SECTION("wrong prefix") {
    CHECK_FALSE(f.is_public_key("PK_" + body));
    CHECK_FALSE(f.is_public_key("pk-" + body));
    CHECK_FALSE(f.is_public_key("xpk_" + body.substr(1)));
    CHECK_FALSE(f.is_public_key(body + "AAA"));
    CHECK_FALSE(f.is_public_key("pk_live_" + body));
  }
  SECTION("wrong length") {
    CHECK_FALSE(f.is_public_key("pk_" + std::string(31, 'A')));
    CHECK_FALSE(f.is_public_key("pk_" + std::string(33, 'A')));
    CHECK_FALSE(f.is_secret_key("sk_" + std::string(31, 'A')));
    CHECK_FALSE(f.is_secret_key("sk_" + std::string(33, 'A')));
    CHECK_FALSE(f.is_public_key(""));
    CHECK_FALSE(f.is_public_key("pk_"));
    CHECK_FALSE(f.is_public_key(std::string(10'000, 'A')));
  }
  SECTION("a non-base62 character anywhere in the body") {
    for (std::size_t i = 0; i < body.size(); ++i) {
      for (char bad : {'_', '-', ':', '+', '/', '=', ' ', '.', '\x7f', '\xff'}) {
        std::string p = pk;
        p[3 + i] = bad;
        CHECK_FALSE(f.is_public_key(p));
        std::string s = sk;
        s[3 + i] = bad;
        CHECK_FALSE(f.is_secret_key(s));
      }
    }
  }
  SECTION("embedded or trailing NUL") {
    std::string p = pk;
    p[10] = '\0';
    CHECK_FALSE(f.is_public_key(p));
    std::string q = pk.substr(0, pk.size() - 1);
    q.push_back('\0');
    CHECK_FALSE(f.is_public_key(q));
    std::string r = pk;
    r.push_back('\0');
    CHECK_FALSE(f.is_public_key(r));
  }
  SECTION("the combined token is neither") {
    CHECK_FALSE(f.is_public_key(pk + ":" + sk));
    CHECK_FALSE(f.is_secret_key(pk + ":" + sk));
  }
  SECTION("custom format") {
    const KeyFormat live = live_format();
    CHECK(live.is_public_key("pk_live_" + std::string(40, 'z')));
    CHECK(live.is_secret_key("sk_live_" + std::string(40, '9')));
    CHECK_FALSE(live.is_public_key("pk_live_" + std::string(32, 'z')));
    CHECK_FALSE(live.is_public_key("pk_" + std::string(45, 'z')));
    CHECK_FALSE(live.is_secret_key("pk_live_" + std::string(40, '9')));
  }
}

TEST_CASE("CsprngKeyGenerator makes keys of the default format", "[key_generator]") {
  CsprngKeyGenerator gen;
  const KeyFormat f;
  for (int i = 0; i < 100; ++i) {
    const apikeys::KeyPair kp = gen.generate(f);
    REQUIRE(kp.public_key.size() == 3 + 32);
    REQUIRE(kp.secret_key.size() == 3 + 32);
    REQUIRE(starts_with(kp.public_key, "pk_"));
    REQUIRE(starts_with(kp.secret_key.reveal(), "sk_"));
    REQUIRE(all_base62(std::string_view(kp.public_key).substr(3)));
    REQUIRE(all_base62(kp.secret_key.reveal().substr(3)));
    REQUIRE(f.is_public_key(kp.public_key));
    REQUIRE(f.is_secret_key(kp.secret_key.reveal()));
    // The secret is not derived from the public key.
    REQUIRE(kp.public_key.substr(3) != kp.secret_key.reveal().substr(3));
  }
}

TEST_CASE("CsprngKeyGenerator honours custom prefixes and length", "[key_generator]") {
  CsprngKeyGenerator gen;
  SECTION("pk_live_/sk_live_, 40 characters") {
    const KeyFormat f = live_format();
    const apikeys::KeyPair kp = gen.generate(f);
    CHECK(kp.public_key.size() == 8 + 40);
    CHECK(kp.secret_key.size() == 8 + 40);
    CHECK(starts_with(kp.public_key, "pk_live_"));
    CHECK(starts_with(kp.secret_key.reveal(), "sk_live_"));
    CHECK(f.is_public_key(kp.public_key));
    CHECK(f.is_secret_key(kp.secret_key.reveal()));
    CHECK_FALSE(KeyFormat().is_public_key(kp.public_key));
  }
  SECTION("the extremes 22 and 128") {
    for (std::size_t len : {std::size_t{22}, std::size_t{128}}) {
      KeyFormat f;
      f.length = len;
      const apikeys::KeyPair kp = gen.generate(f);
      CHECK(kp.public_key.size() == 3 + len);
      CHECK(kp.secret_key.size() == 3 + len);
      CHECK(f.is_public_key(kp.public_key));
      CHECK(f.is_secret_key(kp.secret_key.reveal()));
    }
  }
}

TEST_CASE("append_random_base62 appends exactly count base62 characters", "[key_generator]") {
  std::string out = "keep:";
  apikeys::append_random_base62(out, 0);
  CHECK(out == "keep:");
  apikeys::append_random_base62(out, 1000);
  REQUIRE(out.size() == 5 + 1000);
  CHECK(out.substr(0, 5) == "keep:");
  CHECK(all_base62(std::string_view(out).substr(5)));
  std::string other;
  apikeys::append_random_base62(other, 1000);
  CHECK(other != out.substr(5));
}

TEST_CASE("100,000 generated key pairs have no duplicate and uniform characters",
          "[key_generator][slow]") {
  CsprngKeyGenerator gen;
  const KeyFormat f;
  constexpr std::size_t kPairs = 100'000;
  std::unordered_set<std::string> seen;
  seen.reserve(2 * kPairs);
  std::array<std::uint64_t, 62> counts{};
  std::array<std::uint64_t, 62> first_counts{};  // First body character only.
  std::array<std::uint64_t, 62> last_counts{};   // Last body character only.
  std::size_t bad_chars = 0;
  std::size_t bad_keys = 0;

  auto tally = [&](std::string_view body) {
    for (char c : body) {
      const int idx = base62_index(c);
      if (idx < 0) {
        ++bad_chars;
        continue;
      }
      ++counts[static_cast<std::size_t>(idx)];
    }
    const int first = base62_index(body.front());
    const int last = base62_index(body.back());
    if (first >= 0) ++first_counts[static_cast<std::size_t>(first)];
    if (last >= 0) ++last_counts[static_cast<std::size_t>(last)];
  };

  for (std::size_t i = 0; i < kPairs; ++i) {
    apikeys::KeyPair kp = gen.generate(f);
    if (!f.is_public_key(kp.public_key) || !f.is_secret_key(kp.secret_key.reveal())) {
      ++bad_keys;
      continue;
    }
    tally(std::string_view(kp.public_key).substr(3));
    tally(kp.secret_key.reveal().substr(3));
    // Bodies are compared, so a public key and a secret with the same body count too.
    seen.insert(kp.public_key.substr(3));
    seen.insert(std::string(kp.secret_key.reveal().substr(3)));
  }
  REQUIRE(bad_keys == 0);
  REQUIRE(bad_chars == 0);
  CHECK(seen.size() == 2 * kPairs);

  {  // Every character class and every symbol appears.
    std::uint64_t digits = 0;
    std::uint64_t upper = 0;
    std::uint64_t lower = 0;
    for (std::size_t i = 0; i < 62; ++i) {
      CHECK(counts[i] > 0);
      if (i < 10) {
        digits += counts[i];
      } else if (i < 36) {
        upper += counts[i];
      } else {
        lower += counts[i];
      }
    }
    CHECK(digits > 0);
    CHECK(upper > 0);
    CHECK(lower > 0);
    // Class shares: 10/62, 26/62, 26/62 of 6.4 M characters; a 1 % relative band is
    // over 10 standard deviations wide for each.
    const double total = static_cast<double>(digits + upper + lower);
    const double d_share = static_cast<double>(digits) / total;
    const double u_share = static_cast<double>(upper) / total;
    const double l_share = static_cast<double>(lower) / total;
    CHECK(d_share > 10.0 / 62.0 * 0.99);
    CHECK(d_share < 10.0 / 62.0 * 1.01);
    CHECK(u_share > 26.0 / 62.0 * 0.99);
    CHECK(u_share < 26.0 / 62.0 * 1.01);
    CHECK(l_share > 26.0 / 62.0 * 0.99);
    CHECK(l_share < 26.0 / 62.0 * 1.01);
  }
  {  // Chi-square against uniform over 62 symbols, df = 61.
    const double stat = chi_square_uniform(counts);
    CHECK(stat < kChi2Df61P1e4);
    // Position bias (e.g. a biased first draw) hides in the aggregate: test the ends.
    CHECK(chi_square_uniform(first_counts) < kChi2Df61P1e6);
    CHECK(chi_square_uniform(last_counts) < kChi2Df61P1e6);
  }
}

TEST_CASE("CsprngKeyGenerator through the KeyGenerator interface", "[key_generator]") {
  std::unique_ptr<apikeys::KeyGenerator> gen = std::make_unique<CsprngKeyGenerator>();
  const KeyFormat f;
  const apikeys::KeyPair a = gen->generate(f);
  const apikeys::KeyPair b = gen->generate(f);
  CHECK(a.public_key != b.public_key);
  CHECK(a.secret_key.reveal() != b.secret_key.reveal());
}
