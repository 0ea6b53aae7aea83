// Hostile input: titles and descriptions with quotes, SQL fragments,
// format strings, NUL bytes, control characters, invalid UTF-8, bidirectional overrides,
// zero-width characters and 1 MB strings are
// either refused with Error(invalid_argument) (nothing stored) or stored and returned
// byte-exactly, on MemoryStore and SqliteStore (across a reopen too). Tokens of every
// malformed shape answer `malformed` without the store being consulted.
#include <cstdint>
#include <iostream>
#include <memory>
#include <string>
#include <vector>

#include "apikeys/apikeys.hpp"
#include "catch.hpp"
#include "store_doubles.hpp"
#include "test_support.hpp"

using namespace apikeys;
using namespace std::string_literals;

namespace {

struct Case {
  const char* name;
  std::string title;
  std::string description;
};

std::string repeat(const std::string& s, std::size_t n) {
  std::string out;
  out.reserve(s.size() * n);
  for (std::size_t i = 0; i < n; ++i) out += s;
  return out;
}

const std::string kOneMb(1024 * 1024, 'A');

// Accepted by the rules: must come back byte-exactly (titles trimmed of ASCII space).
std::vector<Case> accepted_cases() {
  return {
      {"quotes", R"(O'Brien "quoted" `back` ''; "")", R"(it's "fine" \' \" \\)"},
      {"SQL fragments", "'); DROP TABLE api_keys; --",
       "1' OR '1'='1'; DELETE FROM apikeys_meta; /* */ --"},
      {"SQL in both", "x\" OR 1=1 --", "'; UPDATE api_keys SET status = 0; SELECT '"},
      {"format strings", "%s%s%s%n%x {} {0} {:>1000}", "%08x %p {name} ${HOME} $(id) `id`"},
      {"markup", "<script>alert(1)</script>", "<img src=x onerror=alert(1)> &amp; ]]>"},
      {"backslash escapes as text", R"(\0 \x00 \n \u0000)", R"(\r\n\t \\x1b[31m)"},
      {"unicode", "\xF0\x9F\x94\x91 cl\xC3\xA9 \xE4\xB8\xAD\xE6\x96\x87 \xD7\xA2\xD7\x91",
       "combining e\xCC\x81, emoji \xF0\x9F\x91\xA9\xF0\x9F\x8F\xBD\xE2\x9D\xA4\xEF\xB8\x8F, RTL \xD7\xA2\xD7\x91 text"},
      {"noncharacters", "\xEF\xBF\xBF\xF4\x8F\xBF\xBF", "\xEF\xBF\xBE"},
      {"max title: 255 four-byte code points", repeat("\xF0\x9F\x98\x80", 255), ""},
      {"max description: 1024 four-byte code points", "max", repeat("\xF0\x90\x8D\x88", 1024)},
      {"description with tab, newline, carriage return", "multi", "line 1\r\nline 2\n\tindented\r"},
      {"title trimmed of ASCII space", "  \t padded \n ", "  kept as is  "},
      {"pipes and separators", "a|b,c;d:e\"f", ":::||| ,,, ;;;"},
      {"looks like a key",
       "pk_aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa:sk_bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb", ""},
  };
}

// Broken rules: must be refused with Error(invalid_argument), storing nothing.
std::vector<Case> refused_cases() {
  return {
      {"NUL in title", "a\0b"s, ""},
      {"NUL alone as title", "\0"s, ""},
      {"NUL in description", "t", "x\0y"s},
      {"NUL then SQL", "ok\0'); DROP TABLE api_keys; --"s, ""},
      {"lone continuation byte", "a\x80z", ""},
      {"overlong slash", "\xC0\xAF", ""},
      {"overlong NUL", "a\xC0\x80z", ""},
      {"UTF-16 surrogate", "\xED\xA0\x80", ""},
      {"above U+10FFFF", "\xF4\x90\x80\x80", ""},
      {"F5..FF lead bytes", "\xF5\x80\x80\x80 \xFF\xFE", ""},
      {"truncated sequence", "euro \xE2\x82", ""},
      {"truncated at end of description", "t", "euro \xE2\x82"},
      {"Latin-1, not UTF-8", "caf\xE9", ""},
      {"escape sequence in title", "\x1b[31mred\x1b[0m", ""},
      {"escape sequence in description", "t", "\x1b]0;owned\x07"},
      {"DEL", "a\x7f", ""},
      {"C1 control (NEL)", "a\xC2\x85z", ""},
      {"right-to-left override in title", "invoice\xE2\x80\xAEtxt.exe", ""},
      {"right-to-left override in description", "t", "RTL \xE2\x80\xAE override"},
      {"bidi isolate in title",
       "a\xE2\x81\xA7"
       "b\xE2\x81\xA9",
       ""},
      {"zero-width space in title", "pay\xE2\x80\x8Broll", ""},
      {"emoji joined by ZWJ in description", "t",
       "ZWJ \xF0\x9F\x91\xA9\xE2\x80\x8D\xF0\x9F\x92\xBB"},
      {"BOM at the start of a title", "\xEF\xBB\xBFtitle", ""},
      {"form feed inside title", "a\fb", ""},
      {"vertical tab in description", "t", "a\vb"},
      {"blank title", " \t\r\n ", ""},
      {"empty title", "", "d"},
      {"256 code points", repeat("\xC3\xA9", 256), ""},
      {"1025 code points", "t", repeat("x", 1025)},
      {"1 MB title", kOneMb, ""},
      {"1 MB description", "t", kOneMb},
      {"1 MB of multi-byte text", repeat("\xE4\xB8\xAD", 350'000), ""},
      {"1 MB of invalid UTF-8", std::string(1024 * 1024, '\xFF'), ""},
  };
}

// What create() must store for an accepted title: trimmed of ASCII white space.
std::string trimmed(const std::string& s) {
  const char* space = " \t\n\r\f\v";
  const auto b = s.find_first_not_of(space);
  if (b == std::string::npos) return {};
  return s.substr(b, s.find_last_not_of(space) - b + 1);
}

struct Created {
  std::string name;
  std::string title;
  std::string description;
  Uuid id;
  std::string pk;
  std::string sk;
};

// Runs every case against `m`; returns the accepted keys for further checks.
std::vector<Created> run_cases(KeyManager& m, const Uuid& account) {
  std::vector<Created> created;
  for (const Case& c : accepted_cases()) {
    std::cout << "hostile: accepted case: " << c.name << "\n";
    CreatedKey k = m.create(account, CreateRequest{c.title, c.description, std::nullopt});
    CHECK(k.info.title == trimmed(c.title));
    CHECK(k.info.description == c.description);
    CHECK(m.validate(k.info.public_key, k.secret_key.reveal()).ok());
    created.push_back(Created{c.name, trimmed(c.title), c.description, k.info.key_id,
                              k.info.public_key, std::string(k.secret_key.reveal())});
  }
  const std::size_t before = m.list(account).size();
  for (const Case& c : refused_cases()) {
    bool refused = false;
    std::string message;
    try {
      (void)m.create(account, CreateRequest{c.title, c.description, std::nullopt});
    } catch (const Error& e) {
      refused = e.code() == ErrorCode::invalid_argument;
      message = e.what();
    }
    if (!refused) std::cerr << "hostile: not refused: " << c.name << "\n";
    CHECK(refused);
    // The message names the rule, never the value.
    if (c.title.size() >= 4) CHECK(message.find(c.title) == std::string::npos);
    if (c.description.size() >= 4) CHECK(message.find(c.description) == std::string::npos);
    CHECK(message.size() < 200);
  }
  CHECK(m.list(account).size() == before);  // nothing refused was stored
  return created;
}

void check_listed(KeyManager& m, const Uuid& account, const std::vector<Created>& created) {
  const std::vector<KeyInfo> listed = m.list(account);
  REQUIRE(listed.size() == created.size());
  for (const Created& c : created) {
    bool found = false;
    for (const KeyInfo& k : listed) {
      if (k.key_id != c.id) continue;
      found = true;
      if (k.title != c.title || k.description != c.description) {
        std::cerr << "hostile: not byte-exact after a round trip: " << c.name << "\n";
      }
      CHECK(k.title == c.title);
      CHECK(k.description == c.description);
    }
    CHECK(found);
    CHECK(m.validate(c.pk, c.sk).ok());
  }
}

KeyRecord record_with(const std::string& title, const std::string& description) {
  KeyRecord r;
  r.info.key_id = Uuid::random();
  r.info.account_id = apikeys_test::account_id(9);
  r.info.public_key = "pk_";
  append_random_base62(r.info.public_key, 32);
  r.info.title = title;
  r.info.description = description;
  r.info.created_at = apikeys_test::test_start();
  r.digest.pepper_id = 1;
  r.digest.bytes.fill(0x5A);
  return r;
}

// Below KeyManager, a Store is handed whatever a user's code gives it: it must keep the
// bytes exactly or refuse with an Error, never mangle or truncate them.
void check_store_bytes(Store& store) {
  const std::vector<std::pair<std::string, std::string>> payloads = {
      {"a\0b"s, "\0\0\0"s},
      {"\xFF\xFE invalid \xC0\x80", "\xED\xA0\x80 surrogate"},
      {"'); DROP TABLE api_keys; --", "\"; DELETE FROM apikeys_meta; --"},
      {"\x1b[2J", kOneMb},
      {std::string(256, '\0'), std::string(1, '\x7f')},
  };
  for (const auto& [title, description] : payloads) {
    const KeyRecord r = record_with(title, description);
    try {
      store.insert(r);
    } catch (const Error& e) {
      std::cout << "hostile: store refused a payload: " << e.what() << "\n";
      continue;
    }
    const auto back = store.find(r.info.public_key);
    REQUIRE(back.has_value());
    CHECK(back->info.title == title);
    CHECK(back->info.description == description);
    CHECK(back->info.title.size() == title.size());
  }
  // Lookups with hostile public keys find nothing and break nothing.
  for (const std::string& pk : {"' OR '1'='1"s, "pk_%"s, "pk_\0"s, "%"s, "_"s, ""s, kOneMb}) {
    CHECK_FALSE(store.find(pk).has_value());
  }
  CHECK(store.list(apikeys_test::account_id(9)).size() >= 4);
}

}  // namespace

TEST_CASE("hostile: titles and descriptions on MemoryStore", "[hostile]") {
  auto t = apikeys_test::make_manager();
  const auto created = run_cases(*t.manager, apikeys_test::account_id(1));
  check_listed(*t.manager, apikeys_test::account_id(1), created);
}

TEST_CASE("hostile: titles and descriptions on SqliteStore, across a reopen", "[hostile]") {
  apikeys_test::TempDir dir;
  const std::string db = dir.file("hostile.db");
  auto hasher = std::make_shared<HmacSha256Hasher>(apikeys_test::kTestPepper);
  std::vector<Created> created;
  {
    KeyManager m(std::make_shared<SqliteStore>(db), hasher);
    created = run_cases(m, apikeys_test::account_id(1));
    check_listed(m, apikeys_test::account_id(1), created);
  }
  KeyManager m(std::make_shared<SqliteStore>(db), hasher);
  check_listed(m, apikeys_test::account_id(1), created);  // the SQL fragments broke nothing
}

TEST_CASE("hostile: stores keep arbitrary bytes exactly or refuse them", "[hostile]") {
  SECTION("MemoryStore") {
    MemoryStore store;
    check_store_bytes(store);
  }
  SECTION("SqliteStore, and again after a reopen") {
    apikeys_test::TempDir dir;
    {
      SqliteStore store(dir.file("bytes.db"));
      check_store_bytes(store);
    }
    SqliteStore store(dir.file("bytes.db"));
    check_store_bytes(store);
  }
}

namespace {

// Every malformed shape we can think of, built around one real key pair.
std::vector<std::pair<std::string, std::string>> malformed_pairs(const std::string& pk,
                                                                 const std::string& sk) {
  std::vector<std::pair<std::string, std::string>> v;
  const std::string pk_body = pk.substr(3);
  const std::string sk_body = sk.substr(3);
  // Wrong lengths.
  v.emplace_back(pk.substr(0, pk.size() - 1), sk);
  v.emplace_back(pk + "a", sk);
  v.emplace_back(pk, sk.substr(0, sk.size() - 1));
  v.emplace_back(pk, sk + "0");
  v.emplace_back("pk_", sk);
  v.emplace_back(pk, "sk_");
  v.emplace_back("", "");
  v.emplace_back(pk, "");
  v.emplace_back("", sk);
  v.emplace_back("pk_" + std::string(1000, 'a'), sk);
  v.emplace_back(pk, "sk_" + std::string(1024 * 1024, 'b'));
  // Wrong prefixes and swapped halves.
  for (const std::string& p :
       {"PK_"s, "Pk_"s, "pk-"s, "pk"s, "pk__"s, "sk_"s, "pk_live_"s, " pk_"s, "\0pk_"s}) {
    v.emplace_back(p + pk_body, sk);
  }
  for (const std::string& p : {"SK_"s, "sk-"s, "sk"s, "pk_"s, "sk_test_"s})
    v.emplace_back(pk, p + sk_body);
  v.emplace_back(sk, pk);
  v.emplace_back(pk, pk);
  v.emplace_back(sk, sk);
  // White space, NUL and line ends around either half.
  for (const std::string& ws : {" "s, "\t"s, "\n"s, "\r\n"s, "\0"s, "\xC2\xA0"s}) {
    v.emplace_back(ws + pk, sk);
    v.emplace_back(pk + ws, sk);
    v.emplace_back(pk, ws + sk);
    v.emplace_back(pk, sk + ws);
  }
  // Every non-base62 byte, at the first, a middle and the last position of each half.
  for (int b = 0; b < 256; ++b) {
    const char c = static_cast<char>(b);
    if ((c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z')) continue;
    for (const std::size_t pos : {std::size_t{3}, std::size_t{18}, pk.size() - 1}) {
      std::string p = pk;
      p[pos] = c;
      v.emplace_back(p, sk);
      std::string s = sk;
      s[pos] = c;
      v.emplace_back(pk, s);
    }
  }
  // Look-alikes: fullwidth digit, Cyrillic a, Greek omicron replacing one character.
  for (const std::string& u : {"\xEF\xBC\x90"s, "\xD0\xB0"s, "\xCE\xBF"s}) {
    v.emplace_back(pk.substr(0, 10) + u + pk.substr(11), sk);
    v.emplace_back(pk, sk.substr(0, 10) + u + sk.substr(11));
  }
  return v;
}

std::vector<std::string> malformed_tokens(const std::string& pk, const std::string& sk) {
  std::vector<std::string> v;
  for (const auto& [p, s] : malformed_pairs(pk, sk)) v.push_back(p + ":" + s);
  for (const std::string& t : {""s,
                               ":"s,
                               "::"s,
                               pk,
                               sk,
                               pk + ":"s,
                               ":"s + sk,
                               sk + ":"s + pk,
                               pk + "::"s + sk,
                               pk + ":"s + sk + ":"s,
                               pk + ":"s + sk + ":x"s,
                               pk + " "s + sk,
                               pk + "|"s + sk,
                               pk + sk,
                               "Bearer "s + pk + ":"s + sk,
                               " "s + pk + ":"s + sk,
                               pk + ":"s + sk + "\n"s,
                               pk + ":"s + sk + "\0"s,
                               pk + "\0:"s + sk,
                               pk + "\xEF\xBC\x9A"s + sk /* fullwidth colon */,
                               std::string(1024 * 1024, ':'),
                               kOneMb}) {
    v.push_back(t);
  }
  return v;
}

}  // namespace

TEST_CASE("hostile: every malformed token is `malformed` and never reaches the store",
          "[hostile]") {
  auto store = std::make_shared<apikeys_test::InstrumentedStore>();
  auto hasher = std::make_shared<HmacSha256Hasher>(apikeys_test::kTestPepper);
  auto cache = std::make_shared<MemoryCache>();
  KeyManagerOptions o;
  o.validation.cache = cache;
  o.validation.record_last_use = false;
  KeyManager m(store, hasher, o);
  const CreatedKey k =
      m.create(apikeys_test::account_id(1), CreateRequest{"real", "", std::nullopt});
  const std::string pk = k.info.public_key;
  const std::string sk(k.secret_key.reveal());
  REQUIRE(m.validate(pk, sk).ok());
  const int finds_before = store->finds.load();
  const std::size_t cached_before = cache->size();

  std::size_t pairs = 0;
  std::size_t tokens = 0;
  for (const auto& [p, s] : malformed_pairs(pk, sk)) {
    const auto r = m.validate(p, s);
    if (r.code != ValidationCode::malformed)
      std::cerr << "hostile: pair not malformed: [" << p << "] [" << s << "]\n";
    CHECK(r.code == ValidationCode::malformed);
    CHECK(r.key_id.is_nil());
    ++pairs;
  }
  for (const std::string& t : malformed_tokens(pk, sk)) {
    const auto r = m.validate(t);
    if (r.code != ValidationCode::malformed)
      std::cerr << "hostile: token not malformed: [" << t << "]\n";
    CHECK(r.code == ValidationCode::malformed);
    ++tokens;
  }
  std::cout << "hostile: " << pairs << " malformed pairs and " << tokens << " malformed tokens\n";
  CHECK(store->finds.load() == finds_before);  // the store was never consulted
  CHECK(cache->size() == cached_before);       // nor the cache filled
  CHECK(m.validate(pk + ":" + sk).ok());       // and the real key still works
}

TEST_CASE("hostile: UUIDs from hostile text", "[hostile]") {
  for (const std::string& s :
       {""s, "' OR 1=1 --"s, "00000000-0000-4000-8000-00000000000"s,
        "00000000-0000-4000-8000-0000000000000"s, "00000000-0000-4000-8000-00000000000g"s,
        "00000000_0000_4000_8000_000000000000"s, "{00000000-0000-4000-8000-000000000000}"s,
        " 00000000-0000-4000-8000-000000000000"s, "00000000-0000-4000-8000-000000000000\0"s,
        "0000000000000400080000000000000000"s, kOneMb}) {
    CHECK_FALSE(Uuid::parse(s).has_value());
  }
  CHECK(Uuid::parse("00000000-0000-4000-8000-00000000000A").has_value());
}
