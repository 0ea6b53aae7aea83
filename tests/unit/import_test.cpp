// Tests of KeyManager::import_keys(): rows of the reference Python service's `api_keys`
// table as JSON lines and as PostgreSQL CSV, every rejection reason with its line, the
// up-front refusals, idempotence, caches, store failures, and digests made the Python
// way (HMAC-SHA256 keyed with API_KEY_SECRET over the whole "sk_..." string).
#include <openssl/evp.h>
#include <openssl/hmac.h>

#include <algorithm>
#include <atomic>
#include <cctype>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <optional>
#include <sstream>
#include <string>
#include <string_view>
#include <vector>

#include <nlohmann/json.hpp>

#include "apikeys/clock.hpp"
#include "apikeys/error.hpp"
#include "apikeys/hasher.hpp"
#include "apikeys/import.hpp"
#include "apikeys/key_generator.hpp"
#include "apikeys/key_manager.hpp"
#include "apikeys/memory_cache.hpp"
#include "apikeys/memory_store.hpp"
#include "apikeys/types.hpp"
#include "catch.hpp"
#include "store_doubles.hpp"
#include "test_support.hpp"

using apikeys::ErrorCode;
using apikeys::ImportFormat;
using apikeys::ImportOptions;
using apikeys::ImportReport;
using apikeys::KeyStatus;
using apikeys::TimePoint;
using apikeys::Uuid;
using apikeys::ValidationCode;
using std::chrono::microseconds;
using std::chrono::milliseconds;

namespace {

// The Python service's API_KEY_SECRET: any bytes, here shorter than 32.
constexpr std::string_view kLegacyPepper = "python-service-secret";

// 2026-11-24T19:00:28Z in Unix seconds.
constexpr std::int64_t kT0 = 1795546828;

TimePoint at(std::int64_t unix_seconds, std::int64_t micros = 0) {
  return TimePoint(std::chrono::duration_cast<TimePoint::duration>(
      std::chrono::seconds(unix_seconds) + microseconds(micros)));
}

// hmac.new(API_KEY_SECRET.encode(), secret_key.encode(), hashlib.sha256).hexdigest()
std::string python_digest(std::string_view secret) {
  unsigned char out[32];
  unsigned int len = 0;
  HMAC(EVP_sha256(), kLegacyPepper.data(), static_cast<int>(kLegacyPepper.size()),
       reinterpret_cast<const unsigned char*>(secret.data()), secret.size(), out, &len);
  return apikeys_test::to_hex(std::string_view(reinterpret_cast<const char*>(out), len));
}

// A legacy key pair, "pk_" / "sk_" and 32 base62 characters, numbered n.
std::string legacy_public(int n) {
  std::string s = "pk_" + std::to_string(1000 + n);
  s.append(35 - s.size(), 'P');
  return s;
}
std::string legacy_secret(int n) {
  std::string s = "sk_" + std::to_string(1000 + n);
  s.append(35 - s.size(), 'S');
  return s;
}
Uuid key_uuid(int n) {
  std::array<std::uint8_t, 16> b{};
  b[0] = 0xAB;
  b[6] = 0x40;
  b[8] = 0x80;
  b[14] = static_cast<std::uint8_t>(n >> 8);
  b[15] = static_cast<std::uint8_t>(n);
  return Uuid(b);
}

// One row of the Python table. nullopt: SQL NULL (JSON null, CSV unquoted empty).
struct PyRow {
  std::optional<std::string> key_id;
  std::optional<std::string> public_key;
  std::optional<std::string> secret_key_hash;
  std::optional<std::string> account_id;
  std::optional<std::string> title;
  std::optional<std::string> description;
  std::optional<std::string> status;
  std::optional<std::string> expires_at;
  std::optional<std::string> last_used_at;
  std::optional<std::string> created_at;
};

PyRow good_row(int n) {
  PyRow r;
  r.key_id = key_uuid(n).to_string();
  r.public_key = legacy_public(n);
  r.secret_key_hash = python_digest(legacy_secret(n));
  r.account_id = apikeys_test::account_id(7).to_string();
  r.title = "Key " + std::to_string(n);
  r.description = "imported";
  r.status = "active";
  r.created_at = "2026-11-24T19:00:28.123456+00:00";
  return r;
}

constexpr const char* kColumns[] = {"key_id",       "public_key",  "secret_key_hash", "account_id",
                                    "title",        "description", "status",          "expires_at",
                                    "last_used_at", "created_at"};

std::vector<const std::optional<std::string>*> fields(const PyRow& r) {
  return {&r.key_id,      &r.public_key, &r.secret_key_hash, &r.account_id,   &r.title,
          &r.description, &r.status,     &r.expires_at,      &r.last_used_at, &r.created_at};
}

std::string json_line(const PyRow& r) {
  nlohmann::json j = nlohmann::json::object();
  const auto f = fields(r);
  for (std::size_t i = 0; i < f.size(); ++i) {
    j[kColumns[i]] = *f[i] ? nlohmann::json(**f[i]) : nlohmann::json(nullptr);
  }
  return j.dump() + "\n";
}

// As PostgreSQL's COPY ... CSV writes a value: quoted when it must be.
std::string csv_value(const std::optional<std::string>& v) {
  if (!v) return "";
  if (!v->empty() && v->find_first_of(",\"\r\n") == std::string::npos) return *v;
  std::string out = "\"";
  for (char c : *v) {
    if (c == '"') out += '"';
    out += c;
  }
  return out + "\"";
}

std::string csv_header() {
  std::string h;
  for (const char* c : kColumns) h += std::string(h.empty() ? "" : ",") + c;
  return h + "\n";
}

std::string csv_line(const PyRow& r) {
  std::string line;
  bool first = true;
  for (const auto* v : fields(r)) {
    if (!first) line += ',';
    first = false;
    line += csv_value(*v);
  }
  return line + "\n";
}

std::shared_ptr<apikeys::HmacSha256Hasher> legacy_hasher() {
  return std::make_shared<apikeys::HmacSha256Hasher>(
      std::vector<apikeys::Pepper>{{1, apikeys_test::kTestPepper}}, 1, kLegacyPepper);
}

// A KeyManager over `store` with a MemoryCache, a ManualClock and a hasher that holds
// the legacy pepper.
struct Importing {
  std::shared_ptr<apikeys::ManualClock> clock =
      std::make_shared<apikeys::ManualClock>(apikeys_test::test_start());
  std::shared_ptr<apikeys::MemoryStore> memory = std::make_shared<apikeys::MemoryStore>();
  std::shared_ptr<apikeys::Store> store;
  std::shared_ptr<apikeys::MemoryCache> cache;
  std::unique_ptr<apikeys::KeyManager> manager;

  explicit Importing(std::shared_ptr<apikeys::Store> s = nullptr,
                     apikeys::KeyManagerOptions options = {},
                     std::shared_ptr<apikeys::Hasher> hasher = legacy_hasher()) {
    store = s ? std::move(s) : memory;
    apikeys::MemoryCacheOptions cache_options;
    cache_options.clock = clock;
    cache = std::make_shared<apikeys::MemoryCache>(cache_options);
    options.validation.clock = clock;
    options.validation.cache = cache;
    manager = std::make_unique<apikeys::KeyManager>(store, std::move(hasher), std::move(options));
  }

  ImportReport run(const std::string& text, ImportFormat format, ImportOptions options = {}) {
    std::istringstream in(text);
    options.format = format;
    return manager->import_keys(in, options);
  }
  ImportReport jsonl(const std::string& text) { return run(text, ImportFormat::json_lines); }
  ImportReport csv(const std::string& text) { return run(text, ImportFormat::csv); }

  ValidationCode validate(int n) const {
    return manager->validate(legacy_public(n), legacy_secret(n)).code;
  }
  apikeys::KeyInfo get(int n) const {
    auto rec = memory->find(legacy_public(n));
    REQUIRE(rec);
    return rec->info;
  }
};

// Records what reached insert(), times unrounded, and can fail the nth insert.
class RecordingStore final : public apikeys_test::ForwardingStore {
 public:
  using ForwardingStore::ForwardingStore;
  void insert(const apikeys::KeyRecord& r) override {
    if (++inserts == fail_at) throw apikeys::Error(ErrorCode::storage, "disk on fire");
    ForwardingStore::insert(r);
    inserted.push_back(r.info);
  }
  int inserts = 0;
  int fail_at = -1;
  std::vector<apikeys::KeyInfo> inserted;
};

std::string lower(std::string s) {
  for (char& c : s) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return s;
}

// No rejection reason quotes any of `hashes`, in either case.
void require_no_hash_in_reasons(const ImportReport& report,
                                const std::vector<std::string>& hashes) {
  for (const auto& r : report.rejections) {
    for (const auto& h : hashes) {
      if (h.size() < 8) continue;
      CHECK(lower(r.reason).find(lower(h)) == std::string::npos);
      CHECK(lower(r.reason).find(lower(h.substr(0, 16))) == std::string::npos);
    }
  }
}

bool reason_has(const ImportReport& report, std::uint64_t line, std::string_view text) {
  for (const auto& r : report.rejections) UNSCOPED_INFO(r.line << ": " << r.reason);
  for (const auto& r : report.rejections) {
    if (r.line == line && r.reason.find(text) != std::string::npos) return true;
  }
  return false;
}

}  // namespace

TEST_CASE("import: JSON lines as the REST export writes them validate under the legacy pepper",
          "[import]") {
  Importing t;
  std::string text;
  for (int n = 1; n <= 3; ++n) text += json_line(good_row(n));
  const ImportReport report = t.jsonl(text);
  CHECK(report.imported == 3);
  CHECK(report.skipped == 0);
  CHECK(report.rejected == 0);
  for (int n = 1; n <= 3; ++n) CHECK(t.validate(n) == ValidationCode::valid);
  CHECK(t.manager->validate(legacy_public(1), legacy_secret(2)).code ==
        ValidationCode::wrong_secret);

  const apikeys::KeyInfo info = t.get(2);
  CHECK(info.key_id == key_uuid(2));
  CHECK(info.account_id == apikeys_test::account_id(7));
  CHECK(info.title == "Key 2");
  CHECK(info.description == "imported");
  CHECK(info.status == KeyStatus::active);
  CHECK(info.version == 1);
  CHECK(info.created_at == at(kT0, 123000));  // MemoryStore keeps milliseconds
  CHECK(info.updated_at == info.created_at);
  CHECK_FALSE(info.expires_at);
  CHECK_FALSE(info.last_used_at);
  CHECK(info.scopes.empty());
  CHECK(info.metadata.empty());
  CHECK_FALSE(info.rotated_from);
  CHECK_FALSE(info.rotated_to);

  // The library's own legacy digest is the Python one.
  auto hasher = legacy_hasher();
  const auto ours = hasher->hash_with(legacy_secret(1), apikeys::kLegacyPepperId);
  REQUIRE(ours);
  CHECK(apikeys_test::to_hex(std::string_view(reinterpret_cast<const char*>(ours->bytes.data()),
                                              32)) == python_digest(legacy_secret(1)));
}

TEST_CASE("import: every timestamp form, converted to UTC with microseconds", "[import]") {
  struct Case {
    const char* text;
    TimePoint want;
  };
  const Case cases[] = {
      {"2026-11-24T19:00:28.123456+00:00", at(kT0, 123456)},
      {"2026-11-24 19:00:28.123456+00", at(kT0, 123456)},
      {"2026-11-24T19:00:28Z", at(kT0)},
      {"2026-11-24 19:00:28.5Z", at(kT0, 500000)},
      {"2026-11-24T19:00:28.123456789Z", at(kT0, 123456)},
      {"2026-11-25T00:30:28+05:30", at(kT0)},
      {"2026-11-25T00:30:28+0530", at(kT0)},
      {"2026-11-24T12:00:28-07", at(kT0)},
      {"2026-11-24T12:00:28.000001-07:00", at(kT0, 1)},
      {"2024-02-29 00:00:00+00", at(1709164800)},
  };
  auto recording = std::make_shared<RecordingStore>(std::make_shared<apikeys::MemoryStore>());
  Importing t(recording);
  std::string jsonl;
  std::string csv = csv_header();
  int n = 0;
  for (const Case& c : cases) {
    PyRow r = good_row(++n);
    r.created_at = c.text;
    r.expires_at = "2099-01-01T00:00:00Z";
    r.last_used_at = c.text;
    jsonl += json_line(r);
    PyRow r2 = good_row(100 + n);
    r2.created_at = c.text;
    csv += csv_line(r2);
  }
  CHECK(t.jsonl(jsonl).imported == static_cast<std::uint64_t>(n));
  const ImportReport report = t.csv(csv);
  CHECK(report.imported == static_cast<std::uint64_t>(n));
  CHECK(report.rejected == 0);
  REQUIRE(recording->inserted.size() == 2 * static_cast<std::size_t>(n));
  for (int i = 0; i < n; ++i) {
    INFO(cases[i].text);
    CHECK(recording->inserted[static_cast<std::size_t>(i)].created_at == cases[i].want);
    CHECK(recording->inserted[static_cast<std::size_t>(i)].updated_at == cases[i].want);
    CHECK(recording->inserted[static_cast<std::size_t>(i)].last_used_at == cases[i].want);
    CHECK(recording->inserted[static_cast<std::size_t>(i)].expires_at == at(4070908800));
    CHECK(recording->inserted[static_cast<std::size_t>(n + i)].created_at == cases[i].want);
  }
}

TEST_CASE("import: impossible or offset-less timestamps are rejected", "[import]") {
  const char* bad[] = {
      "2026-11-24T19:00:28",              // no offset
      "2026-11-24 19:00:28.123456",       // no offset
      "2026-02-30T00:00:00Z",             // February 30
      "2026-02-29T00:00:00Z",             // not a leap year
      "2026-13-01T00:00:00Z",             // month 13
      "2026-11-24T24:00:00Z",             // hour 24
      "2026-11-24T23:60:00Z",             // minute 60
      "2026-11-24T23:59:60Z",             // second 60
      "2026-11-24T19:00:28.Z",            // empty fraction
      "2026-11-24T19:00:28.1234567890Z",  // ten digits
      "2026-11-24T19:00:28+24",           // offset hour 24
      "2026-11-24T19:00:28+05:",          // half an offset
      "2026-11-24T19:00:28+5",            // one-digit offset
      "2026-11-24t19:00:28Z",             // lower-case t
      "2026-11-24T19:00:28z",             // lower-case z
      "26-11-24T19:00:28Z",               // two-digit year
      "2026-11-24T19:00:28Z ",            // trailing space
      "9999-12-31T23:59:59Z",             // beyond TimePoint's range
      "",                                 // empty
      "tomorrow",
  };
  Importing t;
  std::string text;
  int n = 0;
  for (const char* b : bad) {
    PyRow r = good_row(++n);
    r.created_at = b;
    text += json_line(r);
  }
  PyRow r = good_row(++n);
  r.expires_at = "2026-11-24T19:00:28";
  text += json_line(r);
  r = good_row(++n);
  r.last_used_at = "2026-04-31 10:00:00+00";
  text += json_line(r);
  const ImportReport report = t.jsonl(text);
  CHECK(report.imported == 0);
  CHECK(report.rejected == static_cast<std::uint64_t>(n));
  for (int i = 1; i <= n - 2; ++i) {
    INFO(bad[i - 1]);
    CHECK(reason_has(report, static_cast<std::uint64_t>(i), "created_at is not a timestamp"));
  }
  CHECK(reason_has(report, static_cast<std::uint64_t>(n - 1), "expires_at is not a timestamp"));
  CHECK(reason_has(report, static_cast<std::uint64_t>(n), "last_used_at is not a timestamp"));
  // The range is named: a far-future "never expires" needs NULL instead.
  CHECK(reason_has(report, 18, "to 2262-04-11 where it counts nanoseconds"));
}

TEST_CASE("import: CSV as COPY writes it: any column order, NULLs, quoting, CRLF, BOM",
          "[import]") {
  Importing t;
  // Columns shuffled, one the importer does not know.
  std::string text =
      "\xEF\xBB\xBF"
      "created_at,status,account_id,extra,public_key,key_id,secret_key_hash,title,"
      "description,expires_at,last_used_at\r\n";
  auto row = [&](int n, const std::string& title, const std::string& description,
                 const std::string& expires, const std::string& last_used) {
    const PyRow r = good_row(n);
    return "2026-11-24 19:00:28.123456+00,active," + *r.account_id + ",whatever," + *r.public_key +
           "," + *r.key_id + "," + *r.secret_key_hash + "," + title + "," + description + "," +
           expires + "," + last_used + "\r\n";
  };
  text += row(1, "Plain", "", "", "");  // line 2: NULL description, expiry, last use
  text += row(2, "\"Comma, and \"\"quotes\"\"\"", "\"\"", "2099-01-01 00:00:00+00",
              "2026-11-25 08:00:00.5+01");  // line 3: quoted empty description
  text += row(3, "\"Title\"", "\"two\nlines, and\r\nthree\"", "", "");  // lines 4-6
  text += row(4, "", "", "", "");                      // line 7: NULL title: the default
  text += row(5, "\"   \"", "plain", "", "");          // line 8: blank title: the default
  text += row(6, "Bad\xE2\x80\xAEtitle", "", "", "");  // line 9: U+202E
  text += row(7, "x", "\"a\nb\"", "", "bad");          // lines 10-11: bad last_used_at at line 10
  text += row(8, "After", "", "", "");                 // line 12
  const ImportReport report = t.csv(text);
  CHECK(report.imported == 6);
  CHECK(report.rejected == 2);
  REQUIRE(report.rejections.size() == 2);
  CHECK(report.rejections[0].line == 9);
  CHECK(report.rejections[0].reason.find("title") != std::string::npos);
  CHECK(report.rejections[1].line == 10);
  CHECK(report.rejections[1].reason.find("last_used_at") != std::string::npos);

  CHECK(t.get(1).title == "Plain");
  CHECK(t.get(1).description.empty());
  CHECK_FALSE(t.get(1).expires_at);
  CHECK_FALSE(t.get(1).last_used_at);
  CHECK(t.get(2).title == "Comma, and \"quotes\"");
  CHECK(t.get(2).description.empty());
  CHECK(t.get(2).expires_at == at(4070908800));
  CHECK(t.get(2).last_used_at == at(kT0 + 12 * 3600 - 28, 500000));
  CHECK(t.get(3).description == "two\nlines, and\r\nthree");
  CHECK(t.get(4).title == "Imported key");
  CHECK(t.get(5).title == "Imported key");
  CHECK(t.get(5).description == "plain");
  CHECK(t.validate(8) == ValidationCode::valid);
}

TEST_CASE("import: every rejection reason, with its line, and the rows after still imported",
          "[import]") {
  for (const ImportFormat format : {ImportFormat::json_lines, ImportFormat::csv}) {
    INFO((format == ImportFormat::csv ? "csv" : "json lines"));
    Importing t;
    // A key already in the store, whose public key a later row claims for another key.
    REQUIRE(t.jsonl(json_line(good_row(900))).imported == 1);

    std::vector<PyRow> rows;
    std::vector<std::string> expect;  // a part of each reason
    std::vector<std::string> hashes;
    auto add = [&](PyRow r, std::string why) {
      if (r.secret_key_hash) hashes.push_back(*r.secret_key_hash);
      rows.push_back(std::move(r));
      expect.push_back(std::move(why));
    };
    const int base = 10;
    int n = base;
    PyRow r = good_row(++n);
    r.key_id = "not-a-uuid";
    add(r, "key_id is not a UUID");
    r = good_row(++n);
    r.key_id = "abcdef00-0000-4000-8000-00000000001";  // 11 digits at the end
    add(r, "key_id is not a UUID");
    r = good_row(++n);
    r.account_id = "{" + *r.account_id + "}";
    add(r, "account_id is not a UUID");
    r = good_row(++n);
    r.account_id = "00000000-0000-0000-0000-000000000000";
    add(r, "account_id must not be the nil UUID");
    r = good_row(++n);
    (*r.secret_key_hash)[10] = 'g';
    add(r, "secret_key_hash must be 64 hex digits");
    r = good_row(++n);
    r.secret_key_hash->pop_back();
    add(r, "secret_key_hash must be 64 hex digits");
    r = good_row(++n);
    r.secret_key_hash = *r.secret_key_hash + "00";
    add(r, "secret_key_hash must be 64 hex digits");
    r = good_row(++n);
    r.status = "Active";
    add(r, "status must be active, revoked or expired");
    r = good_row(++n);
    r.status = "disabled";
    add(r, "status must be");
    r = good_row(++n);
    r.created_at = "2026-11-24 19:00:28";
    add(r, "created_at is not a timestamp");
    r = good_row(++n);
    r.secret_key_hash.reset();
    add(r, "secret_key_hash is missing or null");
    r = good_row(++n);
    r.created_at.reset();
    add(r, "created_at is missing or null");
    r = good_row(++n);
    r.public_key = "pk_short";
    add(r, "public_key is not a legacy public key");
    r = good_row(++n);
    r.public_key = "acme_" + legacy_public(n);
    add(r, "public_key is not a legacy public key");
    r = good_row(++n);
    r.public_key = legacy_public(900);  // another key's
    add(r, "public key belongs to another key");
    r = good_row(++n);
    r.key_id = key_uuid(900).to_string();  // another key's id, a new public key
    add(r, "key_id (or public key) is taken");
    r = good_row(++n);
    r.title = std::string(256, 'x');
    add(r, "title must be at most 255 characters");
    r = good_row(++n);
    r.title = "a\x01z";
    add(r, "title must not contain control characters");
    r = good_row(++n);
    r.title = "pay\xE2\x80\x8Bpal";  // U+200B
    add(r, "title must not contain bidirectional formatting or zero-width characters");
    r = good_row(++n);
    r.title = "@@BAD-UTF-8@@";  // replaced below: nlohmann's dump() refuses it
    add(r, format == ImportFormat::csv ? "title must be valid UTF-8" : "not valid JSON");
    r = good_row(++n);
    r.description = "a\xE2\x81\xA6z";  // U+2066
    add(r, "description must not contain bidirectional");
    r = good_row(++n);
    r.description = std::string(1025, 'd');
    add(r, "description must be at most 1024 characters");
    r = good_row(++n);
    // A secret pasted where it would be listed. A JSON line is refused before it is
    // parsed (the parser's copies are not wiped), so without naming the member.
    const bool csv = format == ImportFormat::csv;
    r.title = "deploy key " + legacy_secret(n);
    add(r, csv ? "title holds a secret key" : "the row holds a secret key");
    r = good_row(++n);
    r.description = "was: " + legacy_secret(n) + ".";
    add(r, csv ? "description holds a secret key" : "the row holds a secret key");
    r = good_row(++n);
    r.title = "prod_" + legacy_secret(n);  // glued to a word: still a secret
    add(r, csv ? "title holds a secret key" : "the row holds a secret key");
    const int last_bad = n;
    add(good_row(++n), "");  // good rows after the bad ones
    add(good_row(++n), "");

    std::string text = format == ImportFormat::csv ? csv_header() : "";
    for (const PyRow& row : rows) {
      text += format == ImportFormat::csv ? csv_line(row) : json_line(row);
    }
    text.replace(text.find("@@BAD-UTF-8@@"), 13, "\xC3\x28");
    const ImportReport report = t.run(text, format);
    CHECK(report.imported == 2);
    CHECK(report.skipped == 0);
    CHECK(report.rejected == static_cast<std::uint64_t>(last_bad - base));
    REQUIRE(report.rejections.size() == static_cast<std::size_t>(last_bad - base));
    const std::uint64_t first_line = format == ImportFormat::csv ? 2 : 1;
    for (std::size_t i = 0; i < report.rejections.size(); ++i) {
      INFO(report.rejections[i].reason);
      CHECK(report.rejections[i].line == first_line + i);
      CHECK(report.rejections[i].reason.find(expect[i]) != std::string::npos);
    }
    CHECK(t.validate(n - 1) == ValidationCode::valid);
    CHECK(t.validate(n) == ValidationCode::valid);
    CHECK(t.validate(900) == ValidationCode::valid);  // untouched
    hashes.push_back(python_digest(legacy_secret(900)));
    require_no_hash_in_reasons(report, hashes);
    for (const apikeys::ImportRejection& rejection : report.rejections) {
      for (const int pasted : {last_bad - 2, last_bad - 1, last_bad}) {
        CHECK(rejection.reason.find(legacy_secret(pasted).substr(3, 8)) == std::string::npos);
      }
    }
  }
}

TEST_CASE("import: a JSON line holding a secret key is refused, escaped or not", "[import]") {
  // Refused before it is parsed (the parser's copies of its strings are not wiped), so
  // a secret written with JSON escapes must be seen as well.
  Importing t;
  const std::string secret = legacy_secret(7);
  const std::string body = secret.substr(3);
  std::string text;
  std::string line = json_line(good_row(1));
  const auto title_at = [&line] { return line.find("\"title\":") + 8; };
  line.insert(title_at(), "\"sk\\u005f" + body + "\",\"was\":");  // 1: sk\u005f...
  text += line;
  line = json_line(good_row(2));
  std::string escaped;  // 2: every character of the secret as \u00XX
  for (const char c : secret) {
    static const char* kHex = "0123456789abcdef";
    escaped += "\\u00";
    escaped += kHex[(c >> 4) & 0xF];
    escaped += kHex[c & 0xF];
  }
  line.insert(title_at(), "\"" + escaped + "\",\"was\":");
  text += line;
  line = json_line(good_row(3));
  line.insert(title_at(), "\"" + secret.substr(0, 10) + "\\/" + secret.substr(10) +
                              "\",\"was\":");  // 3: an escaped slash breaks the run
  text += line;
  const ImportReport report = t.jsonl(text);
  CHECK(report.rejected == 2);
  // Refused whole, before parsing (after it, the title's own check would name it).
  CHECK(reason_has(report, 1, "the row holds a secret key"));
  CHECK(reason_has(report, 2, "the row holds a secret key"));
  CHECK(report.imported == 1);
}

TEST_CASE("import: a JSON escape that stands for a control character is not read as a letter",
          "[import]") {
  // "desk_" then a newline then 32 base62 characters holds no secret key: the newline
  // breaks the run. Decoded as the letter n, it read as "sk_n..." and the row was refused.
  const std::string body = legacy_secret(8).substr(3);
  for (const char* control : {"\n", "\t", "\r", "\b", "\f"}) {
    CAPTURE(static_cast<int>(control[0]));
    PyRow row = good_row(1);
    row.description = std::string("desk_") + control + body;
    Importing json;
    const ImportReport from_json = json.jsonl(json_line(row));
    // Whatever else the row's description breaks (only a tab and a newline are allowed
    // in one), it is not refused as a secret.
    CHECK_FALSE(reason_has(from_json, 1, "the row holds a secret key"));
    if (control[0] == '\n' || control[0] == '\t') {
      CHECK(from_json.imported == 1);
      // The same row as CSV, where the control character is itself: the same report.
      Importing csv;
      const ImportReport from_csv = csv.csv(csv_header() + csv_line(row));
      CHECK(from_csv.imported == from_json.imported);
      CHECK(from_csv.rejected == from_json.rejected);
    }
  }
}

TEST_CASE("import: JSON lines: shapes of lines, nulls, blank lines, unknown members", "[import]") {
  Importing t;
  PyRow nulls = good_row(1);
  nulls.title.reset();
  nulls.description.reset();
  std::string text;
  text += json_line(nulls);   // 1: NULL title and description
  text += "\n";               // 2: blank
  text += "   \t\r\n";        // 3: blank
  text += "[1,2]\n";          // 4
  text += "\"a string\"\n";   // 5
  text += "{\"key_id\": \n";  // 6: not JSON
  PyRow r = good_row(2);
  std::string line = json_line(r);
  line.insert(1, "\"key_id\": 12, ");  // 7: a number, and twice
  text += line;
  line = json_line(good_row(3));
  line.insert(1, "\"extra\": {\"nested\": [1, {\"title\": 5}]}, \"n\": 1.5, ");
  text += line;  // 8: unknown members ignored
  line = json_line(good_row(4));
  line.replace(line.find("\"status\":\"active\""), 17, "\"status\":[\"active\"]");
  text += line;  // 9: an array for a known member
  PyRow upper = good_row(5);
  for (auto* s : {&*upper.key_id, &*upper.account_id, &*upper.secret_key_hash}) {
    for (char& c : *s) c = static_cast<char>(std::toupper(static_cast<unsigned char>(c)));
  }
  text += json_line(upper);  // 10: upper-case UUIDs and digest
  PyRow missing = good_row(6);
  std::string m = json_line(missing);
  const auto pos = m.find("\"account_id\"");
  m.erase(pos, m.find(',', pos) - pos + 1);
  text += m;                                   // 11: no account_id member
  text += std::string("{\"a\":1}\0{}\n", 11);  // 12: a NUL byte
  text += json_line(good_row(7));              // 13, no newline at the end:
  text.pop_back();

  const ImportReport report = t.jsonl(text);
  CHECK(report.imported == 4);
  CHECK(report.rejected == 7);
  CHECK(reason_has(report, 4, "not a JSON object"));
  CHECK(reason_has(report, 5, "not a JSON object"));
  CHECK(reason_has(report, 6, "not valid JSON"));
  CHECK(reason_has(report, 7, "key_id must be a string or null"));
  CHECK(reason_has(report, 9, "status must be a string or null"));
  CHECK(reason_has(report, 11, "account_id is missing or null"));
  CHECK(reason_has(report, 12, "not valid JSON"));
  CHECK(t.get(1).title == "Imported key");
  CHECK(t.get(1).description.empty());
  CHECK(t.validate(3) == ValidationCode::valid);
  CHECK(t.validate(5) == ValidationCode::valid);
  CHECK(t.get(5).key_id == key_uuid(5));
  CHECK(t.validate(7) == ValidationCode::valid);

  // A member named twice.
  line = json_line(good_row(8));
  line.insert(1, "\"title\": \"first\", ");
  const ImportReport twice = t.jsonl(line);
  CHECK(reason_has(twice, 1, "title appears twice"));
}

TEST_CASE("import: a second run skips every row", "[import]") {
  for (const ImportFormat format : {ImportFormat::json_lines, ImportFormat::csv}) {
    Importing t;
    std::string text = format == ImportFormat::csv ? csv_header() : "";
    for (int n = 1; n <= 5; ++n) {
      text += format == ImportFormat::csv ? csv_line(good_row(n)) : json_line(good_row(n));
    }
    PyRow bad = good_row(6);
    bad.status = "gone";
    text += format == ImportFormat::csv ? csv_line(bad) : json_line(bad);
    const ImportReport first = t.run(text, format);
    CHECK(first.imported == 5);
    CHECK(first.rejected == 1);
    const ImportReport second = t.run(text, format);
    CHECK(second.imported == 0);
    CHECK(second.skipped == 5);
    CHECK(second.rejected == 1);
    CHECK(t.manager->list(apikeys_test::account_id(7)).size() == 5);
  }
}

TEST_CASE("import: expired validates as expired, revoked as revoked", "[import]") {
  Importing t;
  PyRow expired = good_row(1);
  expired.status = "expired";  // no expiry: expires at its creation
  PyRow expired_at = good_row(2);
  expired_at.status = "expired";
  expired_at.expires_at = "2026-12-01T00:00:00Z";
  PyRow expired_later = good_row(3);
  expired_later.status = "expired";
  expired_later.expires_at = "2099-12-01T00:00:00Z";  // the status wins: never valid
  PyRow revoked = good_row(4);
  revoked.status = "revoked";
  PyRow future = good_row(5);
  future.expires_at = "2099-12-01T00:00:00Z";
  t.clock->set(at(kT0 + 30 * 86400));
  const ImportReport report =
      t.jsonl(json_line(expired) + json_line(expired_at) + json_line(expired_later) +
              json_line(revoked) + json_line(future));
  CHECK(report.imported == 5);
  CHECK(t.validate(1) == ValidationCode::expired);
  CHECK(t.get(1).status == KeyStatus::active);
  CHECK(t.get(1).expires_at == t.get(1).created_at);
  CHECK(t.validate(2) == ValidationCode::expired);
  CHECK(t.get(2).expires_at == at(1796083200));
  CHECK(t.validate(3) == ValidationCode::expired);
  CHECK(t.get(3).expires_at <= t.clock->now());
  CHECK(t.validate(4) == ValidationCode::revoked);
  CHECK(t.get(4).status == KeyStatus::revoked);
  CHECK(t.validate(5) == ValidationCode::valid);
}

TEST_CASE("import: a not_found cached before the import does not hide the key", "[import]") {
  Importing t;
  CHECK(t.validate(1) == ValidationCode::not_found);
  CHECK(t.validate(2) == ValidationCode::not_found);
  CHECK(t.cache->size() >= 2);
  CHECK(t.jsonl(json_line(good_row(1))).imported == 1);
  CHECK(t.validate(1) == ValidationCode::valid);
  // A skipped row erases too: a run that stored the key and failed before erasing it
  // is finished by the next.
  t.memory->insert([] {
    apikeys::KeyRecord rec;
    rec.info.key_id = key_uuid(2);
    rec.info.account_id = apikeys_test::account_id(7);
    rec.info.public_key = legacy_public(2);
    rec.info.title = "Key 2";
    rec.info.created_at = apikeys_test::test_start();
    rec.info.updated_at = rec.info.created_at;
    auto hasher = legacy_hasher();
    rec.digest = *hasher->hash_with(legacy_secret(2), apikeys::kLegacyPepperId);
    return rec;
  }());
  CHECK(t.validate(2) == ValidationCode::not_found);  // still the cached verdict
  const ImportReport report = t.jsonl(json_line(good_row(2)));
  CHECK(report.skipped == 1);
  CHECK(t.validate(2) == ValidationCode::valid);
}

TEST_CASE("import: a store failing part way throws, keeps what it wrote, and a rerun finishes",
          "[import]") {
  auto recording = std::make_shared<RecordingStore>(std::make_shared<apikeys::MemoryStore>());
  recording->fail_at = 3;
  Importing t(recording);
  std::string text;
  for (int n = 1; n <= 5; ++n) text += json_line(good_row(n));
  try {
    (void)t.jsonl(text);
    FAIL("no exception");
  } catch (const apikeys::Error& e) {
    CHECK(e.code() == ErrorCode::storage);
  }
  CHECK(recording->inserted.size() == 2);
  CHECK(t.validate(1) == ValidationCode::valid);
  CHECK(t.validate(2) == ValidationCode::valid);
  CHECK_FALSE(recording->find(legacy_public(3)));  // no half-written key
  CHECK(t.validate(3) == ValidationCode::not_found);
  const ImportReport rerun = t.jsonl(text);
  CHECK(rerun.skipped == 2);
  CHECK(rerun.imported == 3);
  for (int n = 1; n <= 5; ++n) CHECK(t.validate(n) == ValidationCode::valid);
}

TEST_CASE("import: a rerun skips a key revoked since, which stays revoked", "[import]") {
  // What README and doc/import.md tell an operator to do with a key that must stop
  // working while the migration may still be run again: revoke it, not delete it.
  Importing t;
  const std::string text = json_line(good_row(1)) + json_line(good_row(2));
  REQUIRE(t.jsonl(text).imported == 2);
  const apikeys::Uuid account = apikeys_test::account_id(7);
  (void)t.manager->revoke(account, key_uuid(1));
  const ImportReport rerun = t.jsonl(text);
  CHECK(rerun.skipped == 2);
  CHECK(rerun.imported == 0);
  CHECK(t.validate(1) == ValidationCode::revoked);
  CHECK(t.validate(2) == ValidationCode::valid);
}

TEST_CASE("import: refused up front without the legacy format or pepper", "[import]") {
  const std::string text = json_line(good_row(1));
  // The import throws invalid_argument saying `says`, and stores nothing.
  const auto refused = [&text](Importing& t, const char* says) {
    try {
      (void)t.jsonl(text);
      FAIL("no exception");
    } catch (const apikeys::Error& e) {
      CHECK(e.code() == ErrorCode::invalid_argument);
      CHECK(std::string(e.what()).find(says) != std::string::npos);
    }
    CHECK_FALSE(t.memory->find(legacy_public(1)));
  };
  SECTION("no format accepts legacy keys") {
    apikeys::KeyManagerOptions options;
    options.validation.format = apikeys::KeyFormat::branded("acme");
    Importing t(nullptr, options);
    refused(t, "also_accept");
  }
  SECTION("a branded format that also accepts legacy keys") {
    apikeys::KeyManagerOptions options;
    options.validation.format = apikeys::KeyFormat::branded("acme");
    options.validation.also_accept = {apikeys::KeyFormat{}};
    Importing t(nullptr, options);
    CHECK(t.jsonl(text).imported == 1);
    CHECK(t.validate(1) == ValidationCode::valid);
  }
  SECTION("a legacy-shaped format with a checksum is not the legacy format") {
    apikeys::KeyManagerOptions options;
    options.validation.format.checksum = true;
    Importing t(nullptr, options);
    CHECK_THROWS_AS(t.jsonl(text), apikeys::Error);
  }
  SECTION("another format with public keys of the legacy shape, in either order") {
    // The Validator reads a pair in the first format that accepts its public key. This
    // one's public keys are pk_ and 32 characters too: first, it reads every legacy key
    // and refuses its sk_ secret; second, the legacy format reads its keys instead.
    for (const bool legacy_first : {false, true}) {
      CAPTURE(legacy_first);
      apikeys::KeyFormat live;
      live.secret_prefix = "sk_live_";
      apikeys::KeyManagerOptions options;
      if (legacy_first) {
        options.validation.also_accept = {live};
      } else {
        options.validation.format = live;
        options.validation.also_accept = {apikeys::KeyFormat{}};
      }
      Importing t(nullptr, options);
      refused(t, "legacy shape");
    }
  }
  SECTION("a longer public prefix shares the legacy keys that begin with its letters") {
    apikeys::KeyManagerOptions options;
    options.validation.format.public_prefix = "pk_a";
    options.validation.format.length = 31;
    options.validation.also_accept = {apikeys::KeyFormat{}};
    Importing t(nullptr, options);
    CHECK_THROWS_AS(t.jsonl(text), apikeys::Error);
  }
  SECTION("a public prefix no legacy key has") {
    apikeys::KeyManagerOptions options;
    options.validation.format.public_prefix = "pk_live_";
    options.validation.format.secret_prefix = "sk_live_";
    options.validation.also_accept = {apikeys::KeyFormat{}};
    Importing t(nullptr, options);
    CHECK(t.jsonl(text).imported == 1);
    CHECK(t.validate(1) == ValidationCode::valid);
  }
  SECTION("the hasher lacks the legacy pepper") {
    Importing t(nullptr, {},
                std::make_shared<apikeys::HmacSha256Hasher>(apikeys_test::kTestPepper));
    refused(t, "legacy pepper");
  }
  SECTION("another pepper id, which the hasher has") {
    Importing t;
    ImportOptions options;
    options.pepper_id = 1;
    CHECK_THROWS_AS(t.run(text, ImportFormat::json_lines,
                          [] {
                            ImportOptions o;
                            o.pepper_id = 2;
                            return o;
                          }()),
                    apikeys::Error);
    CHECK(t.run(text, ImportFormat::json_lines, options).imported == 1);
    CHECK(t.get(1).key_id == key_uuid(1));
    CHECK(t.memory->find(legacy_public(1))->digest.pepper_id == 1);
  }
}

namespace {

// CSV input import_keys() refuses as a whole (no header, a header that lacks a
// column, names one twice or is not valid CSV), with `rows` after some of them.
std::vector<std::string> unusable_csv(const std::string& rows) {
  return {std::string(),
          std::string("\n\n"),
          rows,
          std::string("key_id,public_key,secret_key_hash,account_id,status\n") + rows,
          std::string("key_id,public_key,secret_key_hash,account_id,status,created_at,key_id\n"),
          std::string("\"key_id,public_key\n")};
}

}  // namespace

TEST_CASE("import: CSV without a usable header is refused before anything is imported",
          "[import]") {
  Importing t;
  const std::string rows = csv_line(good_row(1)) + csv_line(good_row(2));
  for (const std::string& text : unusable_csv(rows)) {
    INFO(text);
    try {
      (void)t.csv(text);
      FAIL("no exception");
    } catch (const apikeys::Error& e) {
      CHECK(e.code() == ErrorCode::invalid_argument);
    }
  }
  CHECK(t.manager->list(apikeys_test::account_id(7)).empty());
  // The header alone: nothing to do.
  const ImportReport empty = t.csv(csv_header());
  CHECK(empty.imported + empty.skipped + empty.rejected == 0);
}

TEST_CASE("import: check_import_start refuses what import_keys refuses, from the first bytes",
          "[import]") {
  using apikeys::check_import_start;
  const std::string header = csv_header();
  const std::string rows = csv_line(good_row(1));
  // Every input import_keys refuses as a whole is refused with the same message, once
  // the bytes given are the whole input or hold the header's line break.
  for (const std::string& bad : unusable_csv(rows)) {
    INFO(bad);
    std::string expected;
    try {
      Importing t;
      (void)t.csv(bad);
    } catch (const apikeys::Error& e) {
      expected = e.what();
    }
    REQUIRE_FALSE(expected.empty());
    try {
      (void)check_import_start(bad, /*whole=*/true, ImportFormat::csv);
      FAIL("no exception");
    } catch (const apikeys::Error& e) {
      CHECK(e.code() == ErrorCode::invalid_argument);
      CHECK(std::string(e.what()) == expected);
    }
  }
  CHECK_THROWS_AS(check_import_start(rows + rows, false, ImportFormat::csv), apikeys::Error);
  // A usable header decides as soon as its line break is in; the rows after do not matter.
  CHECK(check_import_start(header, false, ImportFormat::csv));
  CHECK(check_import_start(header + rows.substr(0, 10), false, ImportFormat::csv));
  CHECK(check_import_start("\xEF\xBB\xBF" + header, false, ImportFormat::csv));
  // Cut anywhere before its line break, the header may still go on: undecided...
  for (std::size_t cut = 0; cut < header.size(); ++cut) {
    INFO(cut);
    CHECK_FALSE(check_import_start(header.substr(0, cut), false, ImportFormat::csv));
  }
  // ...even a line break inside an open quote, or a bad header's first part...
  CHECK_FALSE(check_import_start("\"key_id\n", false, ImportFormat::csv));
  CHECK_FALSE(check_import_start("key_id,public_key", false, ImportFormat::csv));
  CHECK_FALSE(check_import_start("\n\n", false, ImportFormat::csv));
  // ...and the header without its line break is whole only when the input ends there.
  const std::string bare = header.substr(0, header.size() - 1);
  CHECK_FALSE(check_import_start(bare, false, ImportFormat::csv));
  CHECK(check_import_start(bare, true, ImportFormat::csv));
  // A header over the size limit is refused before it ends.
  const std::string huge =
      header.substr(0, header.size() - 1) + ",x" + std::string(std::size_t{1} << 20, 'x');
  CHECK_THROWS_AS(check_import_start(huge, false, ImportFormat::csv), apikeys::Error);
  // JSON lines have no header: nothing to wait for.
  CHECK(check_import_start("", false, ImportFormat::json_lines));
  CHECK(check_import_start("{\"key_id\"", false, ImportFormat::json_lines));
}

TEST_CASE("import: CSV rows of the wrong width or broken quoting are rejected alone", "[import]") {
  Importing t;
  std::string text = csv_header();
  std::string short_row = csv_line(good_row(1));
  short_row.erase(short_row.rfind(','));
  short_row += "\n";
  text += short_row;                                    // 2: one field too few
  text += "a\"b\"c,d\n";                                // 3: a quote inside a field
  text += "\"a\"b,c\n";                                 // 4: text after a closing quote
  text += csv_line(good_row(2));                        // 5
  text += "\n";                                         // 6: empty line, skipped
  text += csv_line(good_row(3));                        // 7
  text += "\"never closed,\n" + csv_line(good_row(4));  // 8-9: one record to the end
  const ImportReport report = t.csv(text);
  CHECK(report.imported == 2);
  CHECK(report.rejected == 4);
  CHECK(reason_has(report, 2, "the row has 9 fields; the header has 10"));
  CHECK(reason_has(report, 3, "not valid CSV"));
  CHECK(reason_has(report, 4, "not valid CSV"));
  CHECK(reason_has(report, 8, "not valid CSV"));
  CHECK(t.validate(2) == ValidationCode::valid);
  CHECK(t.validate(3) == ValidationCode::valid);
}

TEST_CASE("import: a row longer than 1 MiB is rejected and reading goes on", "[import]") {
  const std::string huge(std::size_t{1} << 20, 'x');
  SECTION("json lines") {
    Importing t;
    PyRow r = good_row(1);
    r.description = huge;
    const ImportReport report =
        t.jsonl(json_line(r) + json_line(good_row(2)) + huge + "x\n" + json_line(good_row(3)));
    CHECK(report.imported == 2);
    CHECK(report.rejected == 2);
    CHECK(reason_has(report, 1, "longer than 1 MiB"));
    CHECK(reason_has(report, 3, "longer than 1 MiB"));
    CHECK(t.validate(3) == ValidationCode::valid);
  }
  SECTION("csv, the long field quoted over several lines") {
    Importing t;
    PyRow r = good_row(1);
    r.description = "a\n" + huge + "\nb";
    const ImportReport report = t.csv(csv_header() + csv_line(r) + csv_line(good_row(2)));
    CHECK(report.imported == 1);
    CHECK(report.rejected == 1);
    CHECK(reason_has(report, 2, "longer than 1 MiB"));
    CHECK(t.validate(2) == ValidationCode::valid);
  }
}

TEST_CASE("import: max_rejections_listed bounds the list, not the count", "[import]") {
  Importing t;
  std::string text;
  for (int n = 1; n <= 5; ++n) text += "not json\n";
  ImportOptions options;
  options.max_rejections_listed = 2;
  const ImportReport report = t.run(text, ImportFormat::json_lines, options);
  CHECK(report.rejected == 5);
  REQUIRE(report.rejections.size() == 2);
  CHECK(report.rejections[0].line == 1);
  CHECK(report.rejections[1].line == 2);
}

namespace {

// A stream buffer that serves `text`, then fails as std::filebuf does on a read error
// (EIO, or a directory): its underflow() throws.
class FailingBuf final : public std::streambuf {
 public:
  explicit FailingBuf(std::string text) : text_(std::move(text)) {
    setg(text_.data(), text_.data(), text_.data() + text_.size());
  }

 protected:
  int_type underflow() override { throw std::ios_base::failure("read error"); }

 private:
  std::string text_;
};

}  // namespace

TEST_CASE("import: a read error ends the input: the rows read are reported, the stream is bad",
          "[import]") {
  Importing t;
  FailingBuf buf(json_line(good_row(1)) + json_line(good_row(2)));
  std::istream in(&buf);
  ImportReport report;
  REQUIRE_NOTHROW(report = t.manager->import_keys(in, ImportOptions{}));
  CHECK(report.imported == 2);
  CHECK(report.rejected == 0);
  CHECK(in.bad());
  CHECK(t.validate(1) == ValidationCode::valid);
}
