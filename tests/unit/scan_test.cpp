// Tests of apikeys/scan.hpp (find_keys) and of the rule files in scanners/ for other
// secret scanners: both find every generated branded key in text with all kinds of
// neighbours; find_keys also finds legacy keys (flagged) and refuses everything else
// (random base62, other vendors' tokens, keys with one character changed, glued keys,
// bad brands); the rule files' regex matches the shape only, so a key with one character
// changed matches it but find_keys refuses it.
#include <cstddef>
#include <cstdint>
#include <fstream>
#include <random>
#include <regex>
#include <sstream>
#include <string>
#include <string_view>
#include <vector>

#include "apikeys/key_generator.hpp"
#include "apikeys/scan.hpp"
#include "catch.hpp"

using apikeys::find_keys;
using apikeys::FoundKey;
using apikeys::KeyFormat;

namespace {

constexpr std::string_view kBase62 =
    "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
constexpr std::string_view kBrandChars = "0123456789abcdefghijklmnopqrstuvwxyz";

class Gen {
 public:
  explicit Gen(std::uint64_t seed) : rng_(seed) {}

  std::size_t below(std::size_t n) {
    return std::uniform_int_distribution<std::size_t>(0, n - 1)(rng_);
  }

  std::string chars(std::string_view alphabet, std::size_t n) {
    std::string s;
    for (std::size_t i = 0; i < n; ++i) s += alphabet[below(alphabet.size())];
    return s;
  }
  std::string base62(std::size_t n) { return chars(kBase62, n); }

  // A branded key with a valid checksum; `brand` need not be a valid brand.
  std::string branded(std::string_view brand, bool secret) {
    std::string k(brand);
    k += secret ? "_sk_" : "_pk_";
    k += base62(32);
    apikeys::append_key_checksum(k);
    return k;
  }

  std::string legacy(bool secret) { return (secret ? "sk_" : "pk_") + base62(32); }

 private:
  std::mt19937_64 rng_;
};

const std::vector<std::string>& brands() {
  static const std::vector<std::string> b = {"acme",   "ab",   "x9",   "0123456789abcdef",
                                             "sk",     "pk",   "desk", "stripe",
                                             "a1b2c3", "zz00", "kk",   "mysaas"};
  return b;
}

// What may stand before and after a key in the corpora (the key goes between).
struct Neighbours {
  const char* before;
  const char* after;
};
const std::vector<Neighbours>& neighbours() {
  static const std::vector<Neighbours> n = {
      {"", "\n"},
      {"API_KEY=", "\n"},
      {"token = \"", "\"\n"},
      {"key: '", "'\n"},
      {"{\"secret\":\"", "\",\"n\":1}\n"},
      {"https://api.example.com/v1/items?key=", "&page=2\n"},
      {"https://example.com/", "/x\n"},
      {"Authorization: Bearer ", "\r\n"},
      {"curl -u ", ": https://x\n"},
      {"\tkey\t", "\t\n"},
      {"(", ")\n"},
      {"<", ">"},
      {"`", "`"},
      {"-", "-"},
      {"see ", ". Done\n"},
      {"x=", ";"},
      {"\xc3\xa9", "\xc3\xa9\n"},  // UTF-8 letters are not [A-Za-z0-9_].
  };
  return n;
}

// Source-code-like lines that hold no key (many '_', "pk_" and "sk_" in identifiers).
const std::vector<std::string>& filler() {
  static const std::vector<std::string> f = {
      "int my_var = other_func(x_pk, y_sk);\n",
      "  const auto pk_ = make_pk_(sk_, 3);  // pk_ and sk_ are members\n",
      "def get_sk_value(self): return self._sk_\n",
      "SELECT public_key, secret_key_hash FROM api_keys WHERE key_id = $1;\n",
      "export PATH=/usr/local/bin:$PATH\n",
      "pk_short_123 sk_ pk_ _pk_ __sk__ acme_sk_ acme_pk_tooShort\n",
      "\n",
  };
  return f;
}

struct Planted {
  std::size_t offset;
  std::string key;
  bool secret;
  bool legacy;
  std::string brand;
};

struct Corpus {
  std::string text;
  std::vector<Planted> keys;
  std::vector<std::string> snippets;  // Each planted key with its neighbours, alone.
};

void plant(Gen& g, Corpus& c, const std::string& key, bool secret, bool legacy,
           const std::string& brand) {
  for (std::size_t i = g.below(3); i > 0; --i) c.text += filler()[g.below(filler().size())];
  const Neighbours& n = neighbours()[g.below(neighbours().size())];
  c.text += n.before;
  c.keys.push_back({c.text.size(), key, secret, legacy, brand});
  c.text += key;
  c.text += n.after;
  c.snippets.push_back(std::string(n.before) + key + n.after);
}

// 1001 branded keys (public and secret, several brands) and 100 legacy ones.
Corpus make_corpus(Gen& g) {
  Corpus c;
  for (int i = 0; i < 1100; ++i) {
    const bool secret = g.below(2) == 1;
    if (i % 11 == 10) {
      plant(g, c, g.legacy(secret), secret, true, "");
    } else {
      const std::string& brand = brands()[g.below(brands().size())];
      plant(g, c, g.branded(brand, secret), secret, false, brand);
    }
  }
  // One more at the very end of the text.
  c.text += ' ';
  c.keys.push_back({c.text.size(), g.branded("acme", true), true, false, "acme"});
  c.text += c.keys.back().key;
  c.snippets.push_back(c.keys.back().key);
  return c;
}

// Strings find_keys must refuse, and that the rule files' regex does not match either.
std::vector<std::string> make_negatives(Gen& g) {
  std::vector<std::string> out;
  auto with_neighbours = [&](const std::string& s) {
    const Neighbours& n = neighbours()[g.below(neighbours().size())];
    out.push_back(n.before + s + n.after);
  };
  for (int i = 0; i < 100; ++i) {
    with_neighbours(g.base62(38));
    with_neighbours(g.base62(44));
  }
  for (std::size_t len = 24; len <= 99; ++len) {
    for (const char* p : {"sk_live_", "sk_test_", "rk_live_", "pk_live_", "pk_test_"}) {
      with_neighbours(p + g.base62(len));
    }
  }
  for (int i = 0; i < 100; ++i) {
    with_neighbours("ghp_" + g.base62(36));
    with_neighbours("github_pat_" + g.base62(22) + "_" + g.base62(59));
  }
  for (int i = 0; i < 50; ++i) {
    const bool secret = i % 2 == 0;
    const std::string& brand = brands()[g.below(brands().size())];
    // Glued to more base62 after; glued to a word byte that is not [a-z0-9] before.
    with_neighbours(g.branded(brand, secret) + g.base62(1 + g.below(3)));
    with_neighbours(g.chars("ABCXYZ_", 1) + g.branded(brand, secret));
    with_neighbours("x_" + g.branded(brand, secret));
    with_neighbours(g.legacy(secret) + g.base62(1 + g.below(8)));
    with_neighbours(g.base62(1) + g.legacy(secret));
    with_neighbours("_" + g.legacy(secret));
    // Brands of 1 and 17 characters, upper-case brands: all with valid checksums.
    with_neighbours(g.branded(g.chars(kBrandChars, 1), secret));
    with_neighbours(g.branded(g.chars(kBrandChars, 17), secret));
    with_neighbours(g.branded("Acme", secret));
    with_neighbours(g.branded("ACME", secret));
    // Too short.
    with_neighbours(g.branded(brand, secret).substr(0, brand.size() + 4 + 37));
    with_neighbours(g.legacy(secret).substr(0, 34));
  }
  return out;
}

// The branded keys of `c` with one character changed: at every position, to another
// character of the same class (so the shape stays: brand, "pk"/"sk", base62) or, for a
// '_' and 'k', to any other byte. `keeps_shape` says which.
struct Changed {
  std::string text;
  bool keeps_shape;
};
std::vector<Changed> make_changed(Gen& g, const Corpus& c) {
  std::vector<Changed> out;
  std::size_t done = 0;
  for (const Planted& k : c.keys) {
    if (k.legacy) continue;
    if (++done > 40) break;
    const std::size_t b = k.brand.size();
    for (std::size_t i = 0; i < k.key.size(); ++i) {
      std::string s = k.key;
      bool shape = true;
      if (i < b) {
        do s[i] = kBrandChars[g.below(kBrandChars.size())];
        while (s[i] == k.key[i]);
      } else if (i == b + 1) {
        s[i] = s[i] == 'p' ? 's' : 'p';
      } else if (i > b + 3) {
        do s[i] = kBase62[g.below(kBase62.size())];
        while (s[i] == k.key[i]);
      } else {
        s[i] = s[i] == '_' ? '-' : 'q';
        shape = false;
      }
      out.push_back({" " + s + " ", shape});
    }
  }
  return out;
}

Corpus& corpus() {
  static Gen g(0x5ca11ed);
  static Corpus c = make_corpus(g);
  return c;
}

std::string read_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  REQUIRE(in.good());
  std::ostringstream s;
  s << in.rdbuf();
  return s.str();
}

// The regex of scanners/gitleaks.toml: regex = '''...'''.
std::string gitleaks_regex() {
  const std::string f = read_file(std::string(APIKEYS_SCANNERS_DIR) + "/gitleaks.toml");
  const std::string open = "\nregex = '''";
  const std::size_t a = f.find(open);
  REQUIRE(a != std::string::npos);
  const std::size_t b = f.find("'''", a + open.size());
  REQUIRE(b != std::string::npos);
  return f.substr(a + open.size(), b - a - open.size());
}

// The regex of scanners/trufflehog.yaml: the single-quoted value after "regex:".
std::string trufflehog_regex() {
  const std::string f = read_file(std::string(APIKEYS_SCANNERS_DIR) + "/trufflehog.yaml");
  const std::size_t r = f.find("\n    regex:\n");
  REQUIRE(r != std::string::npos);
  const std::size_t a = f.find(": '", r + 12);
  REQUIRE(a != std::string::npos);
  const std::size_t b = f.find("'\n", a + 3);
  REQUIRE(b != std::string::npos);
  const std::string rx = f.substr(a + 3, b - a - 3);
  REQUIRE(rx.find('\'') == std::string::npos);  // No YAML '' escapes to undo.
  return rx;
}

std::vector<std::string> matches(const std::regex& re, const std::string& s) {
  std::vector<std::string> out;
  for (auto it = std::sregex_iterator(s.begin(), s.end(), re); it != std::sregex_iterator(); ++it) {
    out.push_back(it->str());
  }
  return out;
}

}  // namespace

TEST_CASE("find_keys finds every planted key, in order, and nothing else", "[scan]") {
  const Corpus& c = corpus();
  const std::vector<FoundKey> found = find_keys(c.text);
  REQUIRE(found.size() == c.keys.size());
  for (std::size_t i = 0; i < found.size(); ++i) {
    const Planted& k = c.keys[i];
    const FoundKey& f = found[i];
    INFO("key " << i << ": " << k.key);
    CHECK(f.offset == k.offset);
    CHECK(f.length == k.key.size());
    CHECK(f.secret == k.secret);
    CHECK(f.legacy == k.legacy);
    CHECK(f.brand == k.brand);
    if (!k.legacy) {
      const KeyFormat fmt = KeyFormat::branded(k.brand);
      CHECK((k.secret ? fmt.is_secret_key(k.key) : fmt.is_public_key(k.key)));
    }
  }
}

TEST_CASE("find_keys shows a public key whole and only the head of a secret", "[scan]") {
  const Corpus& c = corpus();
  const std::vector<FoundKey> found = find_keys(c.text);
  REQUIRE(found.size() == c.keys.size());
  for (std::size_t i = 0; i < found.size(); ++i) {
    const Planted& k = c.keys[i];
    const FoundKey& f = found[i];
    if (!f.secret) {
      CHECK(f.shown == k.key);
      continue;
    }
    const std::size_t prefix = k.legacy ? 3 : k.brand.size() + 4;
    CHECK(f.shown == k.key.substr(0, prefix + 4) + "...");
    CHECK(f.shown.size() < k.key.size());
    // No part of the random characters beyond the first four is shown.
    const std::string rest = k.key.substr(prefix + 4);
    for (std::size_t j = 0; j + 6 <= rest.size(); ++j) {
      if (f.shown.find(rest.substr(j, 6)) != std::string::npos) FAIL(f.shown << " shows " << k.key);
    }
  }
}

TEST_CASE("find_keys finds each key with its neighbours alone, at the text's ends", "[scan]") {
  for (const std::string& s : corpus().snippets) {
    INFO(s);
    CHECK(find_keys(s).size() == 1);
  }
  Gen g(7);
  const std::string k = g.branded("acme", true);
  REQUIRE(find_keys(k).size() == 1);           // The whole text.
  REQUIRE(find_keys(k + "_old").size() == 1);  // '_' may follow a key.
  REQUIRE(find_keys(g.legacy(false)).size() == 1);
  CHECK(find_keys(g.legacy(false) + "_x").at(0).legacy);
  CHECK(find_keys("").empty());
  CHECK(find_keys("sk_").empty());
  CHECK(find_keys("_").empty());
}

TEST_CASE("find_keys finds keys from the bundled generator", "[scan]") {
  apikeys::CsprngKeyGenerator gen;
  for (const char* brand : {"acme", "zz", "0123456789abcdef"}) {
    const apikeys::KeyPair p = gen.generate(KeyFormat::branded(brand));
    const std::string text = "pk=" + p.public_key + " sk=" + std::string(p.secret_key.reveal());
    const std::vector<FoundKey> found = find_keys(text);
    REQUIRE(found.size() == 2);
    CHECK(found[0].brand == brand);
    CHECK_FALSE(found[0].secret);
    CHECK(found[1].secret);
    CHECK_FALSE(found[1].legacy);
  }
}

TEST_CASE("find_keys refuses look-alikes", "[scan]") {
  Gen g(11);
  for (const std::string& s : make_negatives(g)) {
    INFO(s);
    CHECK(find_keys(s).empty());
  }
}

TEST_CASE("find_keys refuses a branded key with any one character changed", "[scan]") {
  Gen g(13);
  for (const Changed& c : make_changed(g, corpus())) {
    INFO(c.text);
    CHECK(find_keys(c.text).empty());
  }
}

TEST_CASE("the gitleaks and TruffleHog rules match keys by shape", "[scan][scanners]") {
  const std::string gl = gitleaks_regex();
  const std::string th = trufflehog_regex();
  CHECK(gl == th);
  for (const std::string& rx : {gl, th}) {
    INFO("regex: " << rx);
    const std::regex re(rx, std::regex::ECMAScript | std::regex::optimize);
    const Corpus& c = corpus();
    for (std::size_t i = 0; i < c.keys.size(); ++i) {
      INFO(c.snippets[i]);
      const std::vector<std::string> m = matches(re, c.snippets[i]);
      if (c.keys[i].legacy) {
        CHECK(m.empty());  // Legacy keys are not the rules' business.
      } else {
        CHECK(m == std::vector<std::string>{c.keys[i].key});
      }
    }
    Gen g(11);
    for (const std::string& s : make_negatives(g)) {
      INFO(s);
      CHECK(matches(re, s).empty());
    }
    // The rules cannot check the checksum: a key with one character changed still has
    // the shape, and only find_keys (`apikeys scan`) refuses it.
    Gen h(13);
    std::size_t shaped = 0;
    for (const Changed& ch : make_changed(h, c)) {
      INFO(ch.text);
      if (ch.keeps_shape) {
        ++shaped;
        CHECK(matches(re, ch.text).size() == 1);
      } else {
        CHECK(matches(re, ch.text).empty());
      }
      CHECK(find_keys(ch.text).empty());
    }
    CHECK(shaped > 1000);
    // The one documented difference: a key glued to a '_' after it.
    const std::string glued = g.branded("acme", false) + "_old";
    CHECK(matches(re, glued).empty());
    CHECK(find_keys(glued).size() == 1);
  }
}
