// PostgresStore against a real server (APIKEYS_TEST_PG): the shared Store contract,
// sharing between instances, and faults (the server restarting mid-run, the server
// down: `error` for what is not cached, clear management errors, recovery, nothing
// lost); credentials (no message quotes a connection string, the store's copy is
// wiped); returning a connection to the pool never allocates. Tests that need a server
// are skipped with a message when none is configured (a failure under
// APIKEYS_REQUIRE_SERVERS=1); those about malformed connection strings and failed
// connects need none and always run. Also: a last-use write stuck on a row lock never
// delays the revision poll; the audit trail (the shared audit contract, events read
// back byte for byte, nothing written when the ChangeAudit throws, the upgrade of a
// version 4 schema, two processes revoking one account at once).
#include <arpa/inet.h>
#include <libpq-fe.h>
#include <netinet/in.h>
#include <signal.h>
#include <spawn.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <memory>
#include <optional>
#include <stdexcept>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "alloc_probe.hpp"
#include "apikeys/error.hpp"
#include "apikeys/hasher.hpp"
#include "apikeys/key_manager.hpp"
#include "apikeys/limiter.hpp"
#include "apikeys/memory_cache.hpp"
#include "apikeys/postgres_store.hpp"
#include "audit_contract.hpp"
#include "catch.hpp"
#include "record_fields.hpp"
#include "server_support.hpp"
#include "store_contract.hpp"
#include "store_doubles.hpp"
#include "test_support.hpp"

#include "../../src/hex.hpp"

#if defined(APIKEYS_STATIC_DEFINE)
#include "decoy_probe.hpp"  // a static build only: the library's private decoy counter
#endif

extern char** environ;

using apikeys::ErrorCode;
using apikeys::ValidationCode;
using apikeys_test::contract::error_code_of;
using apikeys_test::contract::record;
using std::chrono::milliseconds;

namespace {

// Drops the schemas the tests made (the server may be a developer's own).
class SchemaJanitor {
 public:
  explicit SchemaJanitor(std::string conninfo) : conninfo_(std::move(conninfo)) {}
  ~SchemaJanitor() {
    if (names_.empty()) return;
    PGconn* c = PQconnectdb(conninfo_.c_str());
    if (PQstatus(c) == CONNECTION_OK) {
      PQsetNoticeProcessor(
          c, [](void*, const char*) {}, nullptr);  // "drop cascades to ..."
      for (const auto& n : names_) {
        PQclear(PQexec(c, ("DROP SCHEMA IF EXISTS \"" + n + "\" CASCADE").c_str()));
      }
    }
    PQfinish(c);
  }
  SchemaJanitor(const SchemaJanitor&) = delete;
  SchemaJanitor& operator=(const SchemaJanitor&) = delete;

  std::string make() {
    names_.push_back(apikeys_test::unique_name("apikeys_t"));
    return names_.back();
  }

 private:
  std::string conninfo_;
  std::vector<std::string> names_;
};

apikeys::PostgresStoreOptions options_for(const std::string& schema) {
  apikeys::PostgresStoreOptions o;
  o.schema = schema;
  o.connect_timeout = milliseconds(2000);
  o.statement_timeout = milliseconds(2000);
  o.pool_wait = milliseconds(2000);
  return o;
}

apikeys::KeyManagerOptions manager_options(std::shared_ptr<apikeys::Cache> cache,
                                           milliseconds poll = milliseconds(250)) {
  apikeys::KeyManagerOptions o;
  o.validation.cache = std::move(cache);
  o.validation.revision_poll_interval = poll;
  o.validation.flush_interval = milliseconds(100);
  return o;
}

}  // namespace

using apikeys_test::hasher;
using apikeys_test::request;

TEST_CASE("PostgresStore satisfies the Store contract", "[servers][postgres][store]") {
  const auto pg = apikeys_test::test_pg();
  if (!pg) return;
  SchemaJanitor janitor(*pg);
  apikeys_test::run_store_contract(
      [&] { return std::make_shared<apikeys::PostgresStore>(*pg, options_for(janitor.make())); });
}

TEST_CASE("PostgresStore satisfies the audit contract", "[servers][postgres][store][audit]") {
  const auto pg = apikeys_test::test_pg();
  if (!pg) return;
  SchemaJanitor janitor(*pg);
  apikeys_test::run_audit_contract(
      [&] { return std::make_shared<apikeys::PostgresStore>(*pg, options_for(janitor.make())); });
}

namespace {

// Runs `sql` (one or more statements) on a connection of its own; REQUIREs success and
// returns the rows of the last statement, each column as text ("NULL" for NULL).
std::vector<std::vector<std::string>> run_sql(const std::string& conninfo, const std::string& sql) {
  PGconn* c = PQconnectdb(conninfo.c_str());
  struct Finish {
    PGconn* c;
    ~Finish() { PQfinish(c); }
  } finish{c};
  REQUIRE(PQstatus(c) == CONNECTION_OK);
  PQsetNoticeProcessor(
      c, [](void*, const char*) {}, nullptr);
  PGresult* r = PQexec(c, sql.c_str());
  const ExecStatusType st = PQresultStatus(r);
  std::vector<std::vector<std::string>> rows;
  for (int i = 0; st == PGRES_TUPLES_OK && i < PQntuples(r); ++i) {
    std::vector<std::string> row;
    for (int j = 0; j < PQnfields(r); ++j) {
      row.emplace_back(PQgetisnull(r, i, j) ? "NULL" : PQgetvalue(r, i, j));
    }
    rows.push_back(std::move(row));
  }
  INFO(sql << ": " << PQresultErrorMessage(r));
  PQclear(r);
  REQUIRE((st == PGRES_COMMAND_OK || st == PGRES_TUPLES_OK));
  return rows;
}

// CHECKs that `schema`.apikeys_keys has exactly the columns of src/record_fields.hpp, in
// order, with their types and nullability (seq, lineage_id and rate_limits aside, unless
// the description has them: PostgresStore's own), and the index that list pages walk.
void check_table_matches_record_fields(const std::string& conninfo, const std::string& schema) {
  const auto rows =
      run_sql(conninfo,
              "SELECT column_name, data_type, is_nullable FROM information_schema.columns"
              " WHERE table_schema = '" +
                  schema +
                  "' AND table_name = 'apikeys_keys'"
                  " AND column_name <> 'seq' ORDER BY ordinal_position");
  std::vector<std::string> got;
  std::vector<std::string> want;
  std::vector<std::string> own = {"lineage_id uuid YES", "rate_limits text NO"};
  for (const apikeys::detail::RecordField& f : apikeys::detail::kRecordFields) {
    want.push_back(std::string(f.name) + " " + f.pg_type + " " + (f.nullable() ? "YES" : "NO"));
    own.erase(std::remove(own.begin(), own.end(), want.back()), own.end());
  }
  std::vector<std::string> extra;
  for (const auto& row : rows) {
    std::string column = row[0] + " " + row[1] + " " + row[2];
    if (std::find(own.begin(), own.end(), column) != own.end()) {
      extra.push_back(std::move(column));
    } else {
      got.push_back(std::move(column));
    }
  }
  CHECK(got == want);
  CHECK(extra == own);
  const auto index =
      run_sql(conninfo, "SELECT indexdef FROM pg_indexes WHERE schemaname = '" + schema +
                            "' AND indexname = 'apikeys_keys_account_page'");
  REQUIRE(index.size() == 1);
  CHECK(index[0][0].find("(account_id, created_at DESC, key_id DESC)") != std::string::npos);
}

}  // namespace

TEST_CASE("PostgresStore's apikeys_keys table has the fields of the record description, in order",
          "[servers][postgres][store]") {
  const auto pg = apikeys_test::test_pg();
  if (!pg) return;
  SchemaJanitor janitor(*pg);
  const std::string schema = janitor.make();
  { apikeys::PostgresStore store(*pg, options_for(schema)); }
  check_table_matches_record_fields(*pg, schema);
}

namespace {

// The tables as 0.1 left them: apikeys_schema_version as PostgresStore's constructor
// creates it, then migration steps 1 and 2 exactly as released, and version 2.
std::string released_schema_sql(const std::string& schema) {
  std::string sql = R"sql(
CREATE SCHEMA {s};
CREATE TABLE {s}.apikeys_schema_version (id integer NOT NULL PRIMARY KEY CHECK (id = 1), version integer NOT NULL);
INSERT INTO {s}.apikeys_schema_version (id, version) VALUES (1, 0) ON CONFLICT (id) DO NOTHING;

CREATE TABLE {s}.apikeys_keys (
  key_id       uuid     NOT NULL PRIMARY KEY,
  account_id   uuid     NOT NULL,
  public_key   text     NOT NULL UNIQUE,
  digest       bytea    NOT NULL CHECK (length(digest) = 32),
  pepper_id    bigint   NOT NULL CHECK (pepper_id BETWEEN 0 AND 4294967295),
  title        text     NOT NULL,
  description  text     NOT NULL,
  status       smallint NOT NULL CHECK (status IN (0, 1)),
  created_at   bigint   NOT NULL,
  expires_at   bigint,
  last_used_at bigint,
  seq          bigint   GENERATED ALWAYS AS IDENTITY
);
CREATE INDEX apikeys_keys_account_created
  ON {s}.apikeys_keys (account_id, created_at DESC, seq DESC);
CREATE TABLE {s}.apikeys_meta (
  id       integer NOT NULL PRIMARY KEY CHECK (id = 1),
  revision bigint  NOT NULL
);
INSERT INTO {s}.apikeys_meta (id, revision) VALUES (1, 0);
UPDATE {s}.apikeys_schema_version SET version = 1 WHERE id = 1;

CREATE TABLE {s}.apikeys_changes (
  revision   bigint NOT NULL PRIMARY KEY,
  public_key text   NOT NULL
);
UPDATE {s}.apikeys_schema_version SET version = 2 WHERE id = 1;
)sql";
  const std::string quoted = '"' + schema + '"';
  for (auto at = sql.find("{s}"); at != std::string::npos; at = sql.find("{s}", at)) {
    sql.replace(at, 3, quoted);
  }
  return sql;
}

// An INSERT of `r` as 0.1 wrote one: its eleven columns, nothing else.
std::string released_insert_sql(const std::string& schema, const apikeys::KeyRecord& r) {
  const auto quote = [](const std::string& text) {
    std::string out = "'";
    for (const char c : text) {
      if (c == '\'') out += '\'';
      out += c;
    }
    return out + "'";
  };
  const auto millis = [](const std::optional<apikeys::TimePoint>& t) {
    return t ? std::to_string(apikeys::to_unix_millis(*t)) : std::string("NULL");
  };
  std::string digest(64, '0');
  apikeys::detail::hex_encode(r.digest.bytes.data(), r.digest.bytes.size(), digest.data(),
                              apikeys::detail::HexCase::lower);
  return "INSERT INTO \"" + schema +
         "\".apikeys_keys (key_id, account_id, public_key, digest, pepper_id, title,"
         " description, status, created_at, expires_at, last_used_at) VALUES (" +
         quote(r.info.key_id.to_string()) + ", " + quote(r.info.account_id.to_string()) + ", " +
         quote(r.info.public_key) + ", '\\x" + digest + "'::bytea, " +
         std::to_string(r.digest.pepper_id) + ", " + quote(r.info.title) + ", " +
         quote(r.info.description) + ", " + std::to_string(static_cast<int>(r.info.status)) + ", " +
         millis(r.info.created_at) + ", " + millis(r.info.expires_at) + ", " +
         millis(r.info.last_used_at) + ");";
}

}  // namespace

TEST_CASE("PostgresStore migrates a 0.1 schema (version 2) without losing a row or a field",
          "[servers][postgres][store][migration]") {
  const auto pg = apikeys_test::test_pg();
  if (!pg) return;
  SchemaJanitor janitor(*pg);
  const std::string schema = janitor.make();
  using apikeys_test::contract::at;
  const apikeys::Uuid alice = apikeys_test::account_id(1);
  const apikeys::Uuid bob = apikeys_test::account_id(2);

  // A real key, so that its secret can be checked after the migration: made by a
  // KeyManager over memory (the test pepper), expiring in 30 days.
  auto maker = apikeys_test::make_manager();
  const auto real = maker->create(alice, apikeys::CreateRequest("real key", "validates", 30));
  auto real_record = maker.store->find(real.info.public_key);
  REQUIRE(real_record);
  real_record->info.last_used_at = apikeys_test::test_start() + std::chrono::hours(1);

  // A revoked key with a non-ASCII title, a description and an odd pepper id; another
  // account's key, never used, no expiry; and one created at the same millisecond.
  apikeys::KeyRecord revoked = record(11, alice, -5000);
  revoked.info.title = "d\xc3\xa9j\xc3\xa0 vu \xe2\x80\x94 first";
  revoked.info.description = "it's revoked";
  revoked.info.status = apikeys::KeyStatus::revoked;
  revoked.info.expires_at = at(86'400'000);
  revoked.info.last_used_at = apikeys::from_unix_millis(1796284795953);
  revoked.digest.pepper_id = 4294967295U;
  apikeys::KeyRecord other = record(12, bob, -7000);
  apikeys::KeyRecord twin = record(10, alice, -5000);  // a smaller id, inserted later
  const std::vector<apikeys::KeyRecord> rows = {*real_record, revoked, other, twin};

  std::string setup = released_schema_sql(schema);
  for (const auto& r : rows) setup += released_insert_sql(schema, r);
  // 0.1's revoke bumped the revision and logged the key.
  setup += "UPDATE \"" + schema + "\".apikeys_meta SET revision = 1 WHERE id = 1;";
  setup += "INSERT INTO \"" + schema + "\".apikeys_changes VALUES (1, '" + revoked.info.public_key +
           "');";
  run_sql(*pg, setup);

  auto store = std::make_shared<apikeys::PostgresStore>(*pg, options_for(schema));
  CHECK(run_sql(*pg, "SELECT version FROM \"" + schema + "\".apikeys_schema_version") ==
        std::vector<std::vector<std::string>>{
            {std::to_string(apikeys::PostgresStore::schema_version())}});
  check_table_matches_record_fields(*pg, schema);

  // Every row and every field is there; the new fields have their defaults.
  for (const auto& want : rows) {
    INFO("key " << want.info.title);
    const auto got = store->find(want.info.public_key);
    REQUIRE(got);
    apikeys_test::contract::check_same_record(*got, want);
    CHECK(got->info.metadata.empty());
    CHECK(got->info.scopes.empty());
    CHECK(got->info.updated_at == got->info.created_at);
    CHECK(got->info.version == 1);
    CHECK_FALSE(got->info.rotated_from);
    CHECK_FALSE(got->info.rotated_to);
    const auto listed = store->get(want.info.account_id, want.info.key_id);
    REQUIRE(listed);
    apikeys_test::contract::check_same_info(*listed, want.info);
  }
  // list(): the later insert first among equal times; list_page(): the larger id first.
  CHECK(apikeys_test::contract::ids_of(store->list(alice)) ==
        std::vector<apikeys::Uuid>{real.info.key_id, twin.info.key_id, revoked.info.key_id});
  CHECK(apikeys_test::contract::ids_of(store->list_page(alice, std::nullopt, 10, std::nullopt)) ==
        std::vector<apikeys::Uuid>{real.info.key_id, revoked.info.key_id, twin.info.key_id});
  // The change log carries on from where 0.1 left it.
  CHECK(store->revision() == 1);
  const auto changes = store->changes_since(0);
  REQUIRE(changes);
  CHECK(changes->public_keys == std::vector<std::string>{revoked.info.public_key});

  // The secret still validates; the new status and the new writes work on old rows.
  apikeys::KeyManagerOptions mo;
  mo.validation.clock = std::make_shared<apikeys::ManualClock>(apikeys_test::test_start());
  mo.validation.record_last_use = false;
  apikeys::KeyManager manager(store, hasher(), mo);
  CHECK(manager.validate(real.info.public_key, real.secret_key.reveal()).ok());
  CHECK(manager.validate(revoked.info.public_key, "sk_" + std::string(32, 'x')).code ==
        ValidationCode::wrong_secret);
  const auto disabled = manager.disable(alice, real.info.key_id);
  CHECK(disabled.status == apikeys::KeyStatus::disabled);
  CHECK(disabled.version == 2);
  CHECK(manager.validate(real.info.public_key, real.secret_key.reveal()).code ==
        ValidationCode::disabled);
  CHECK(store->revision() == 2);
}

TEST_CASE("PostgresStore migrates a version 3 schema in place: no lineage, limits or credits",
          "[servers][postgres][store][migration]") {
  const auto pg = apikeys_test::test_pg();
  if (!pg) return;
  SchemaJanitor janitor(*pg);
  const std::string schema = janitor.make();
  const std::string s = "\"" + schema + "\"";
  const apikeys::Uuid alice = apikeys_test::account_id(1);
  apikeys::KeyRecord plain = record(31, alice, -3000);
  plain.info.scopes = {"read", "write"};
  plain.info.lineage_id = apikeys::Uuid{};  // as version 3 stores kept it: none
  apikeys::KeyRecord rotated = record(32, alice, -2000);
  rotated.info.lineage_id = apikeys::Uuid{};
  rotated.info.rotated_from = plain.info.key_id;
  {
    apikeys::PostgresStore fresh(*pg, options_for(schema));
    fresh.insert(plain);
    fresh.insert(rotated);
  }
  // Back to the tables version 3 wrote (the columns and the table of version 4 gone,
  // and the audit trail of version 5).
  run_sql(*pg, "ALTER TABLE " + s +
                   ".apikeys_keys DROP COLUMN lineage_id, DROP COLUMN rate_limits;"
                   " DROP TABLE " +
                   s +
                   ".apikeys_key_credits;"
                   " DROP TABLE " +
                   s +
                   ".apikeys_audit_events;"
                   " UPDATE " +
                   s + ".apikeys_schema_version SET version = 3 WHERE id = 1;");

  auto store = std::make_shared<apikeys::PostgresStore>(*pg, options_for(schema));
  CHECK(run_sql(*pg, "SELECT version FROM " + s + ".apikeys_schema_version") ==
        std::vector<std::vector<std::string>>{
            {std::to_string(apikeys::PostgresStore::schema_version())}});
  check_table_matches_record_fields(*pg, schema);
  for (const auto* want : {&plain, &rotated}) {
    const auto got = store->find(want->info.public_key);
    REQUIRE(got);
    apikeys_test::contract::check_same_record(*got, *want);
    CHECK(got->info.lineage_id.is_nil());
    CHECK(got->info.lineage() == want->info.key_id);
    CHECK(got->info.rate_limits.empty());
    CHECK_FALSE(got->info.credits);
  }
  // Old rows take the new fields: limits by replace(), credits by change_credits().
  apikeys::KeyInfo next = *store->get(alice, plain.info.key_id);
  apikeys::RateLimit limit;
  limit.name = "per-minute";
  limit.limit = 60;
  limit.period = std::chrono::minutes(1);
  next.rate_limits = {limit};
  const auto replaced = store->replace(alice, next, next.version);
  REQUIRE(replaced.outcome == apikeys::WriteOutcome::applied);
  REQUIRE(replaced.key.rate_limits.size() == 1);
  CHECK(apikeys::format_rate_limit(replaced.key.rate_limits[0]) == "per-minute=60/1m");
  apikeys::CreditsChange change;
  change.remaining = 3;
  const auto credited = store->change_credits(alice, plain.info.key_id, change);
  REQUIRE(credited);
  REQUIRE(credited->credits);
  CHECK(credited->credits->remaining == 3);
  CHECK(store->take_credits(plain.info.key_id, 2, 2, apikeys_test::test_start()).remaining == 1);

  // Limits that do not parse fail the read: never a key without its limits.
  run_sql(*pg, "UPDATE " + s +
                   ".apikeys_keys SET rate_limits = 'per-minute=60/1m;bogus'"
                   " WHERE key_id = '" +
                   plain.info.key_id.to_string() + "'");
  CHECK(error_code_of([&] { (void)store->find(plain.info.public_key); }) ==
        apikeys::ErrorCode::storage);
  CHECK(error_code_of([&] { (void)store->get(alice, plain.info.key_id); }) ==
        apikeys::ErrorCode::storage);
}

TEST_CASE("PostgresStore keeps a change log of revokes and deletes", "[servers][postgres][store]") {
  const auto pg = apikeys_test::test_pg();
  if (!pg) return;
  SchemaJanitor janitor(*pg);
  apikeys_test::run_change_log_contract(
      [&] { return std::make_shared<apikeys::PostgresStore>(*pg, options_for(janitor.make())); },
      apikeys::PostgresStore::kChangeLogSize);
}

#if defined(APIKEYS_STATIC_DEFINE)
TEST_CASE("PostgresStore reads a decoy row on every miss, past the last public key included",
          "[servers][postgres][store][timing]") {
  const auto pg = apikeys_test::test_pg();
  if (!pg) return;
  SchemaJanitor janitor(*pg);
  apikeys::PostgresStore store(*pg, options_for(janitor.make()));
  const apikeys::Uuid alice = apikeys_test::account_id(1);
  using apikeys_test::contract::public_key;
  const auto misses_without_decoy = [&](std::uint32_t misses) {
    return apikeys_test::misses_without_decoy(store, misses);
  };
  // Empty: nothing to read, and nothing read.
  CHECK(misses_without_decoy(5) == 20);
  for (std::uint32_t n = 1; n <= 20; ++n) store.insert(record(n, alice));
  CHECK(misses_without_decoy(20) == 0);
  // A miss reads the row of the next public key in the index's order, whatever the key
  // ids (these count up, as an import's may): before the first public key, between two,
  // and past the last one, where the statement's second branch reads the first row.
  for (const std::string& pk :
       {"pk_" + std::string(32, '0'), public_key(7) + "0", "pk_" + std::string(32, 'z')}) {
    CAPTURE(pk);
    for (const bool validation : {false, true}) {
      const std::uint64_t before = apikeys::detail::decoy_reads();
      CHECK_FALSE((validation ? store.find_for_validation(pk) : store.find(pk)).has_value());
      CHECK(apikeys::detail::decoy_reads() == before + 1);
    }
  }
  // A hit reads no decoy and returns its own record.
  const std::uint64_t before = apikeys::detail::decoy_reads();
  const auto hit = store.find(public_key(7));
  REQUIRE(hit);
  CHECK(hit->info.key_id == apikeys_test::contract::key_id(7));
  CHECK(hit->info.public_key == public_key(7));
  CHECK(apikeys::detail::decoy_reads() == before);
}
#endif  // APIKEYS_STATIC_DEFINE

TEST_CASE("PostgresStore: instances on one schema share keys and the revision",
          "[servers][postgres][store]") {
  const auto pg = apikeys_test::test_pg();
  if (!pg) return;
  SchemaJanitor janitor(*pg);
  const std::string schema = janitor.make();
  apikeys::PostgresStore a(*pg, options_for(schema));
  apikeys::PostgresStore b(*pg, options_for(schema));
  const apikeys::Uuid alice = apikeys_test::account_id(1);

  a.insert(record(1, alice));
  a.insert(record(2, alice));
  const auto seen = b.find(apikeys_test::contract::public_key(1));
  REQUIRE(seen);
  CHECK(seen->info.key_id == apikeys_test::contract::key_id(1));
  CHECK(error_code_of([&] { b.insert(record(1, alice)); }) == ErrorCode::already_exists);

  const std::uint64_t r0 = b.revision();
  REQUIRE(a.set_status(alice, apikeys_test::contract::key_id(1), apikeys::KeyStatus::revoked));
  const std::uint64_t r1 = b.revision();
  CHECK(r1 != r0);
  REQUIRE(b.find(apikeys_test::contract::public_key(1))->info.status ==
          apikeys::KeyStatus::revoked);
  REQUIRE(a.remove(alice, apikeys_test::contract::key_id(2)));
  CHECK(b.revision() != r1);
  CHECK_FALSE(b.find(apikeys_test::contract::public_key(2)));

  SECTION("reopening keeps the data; concurrent openers of a new schema all succeed") {
    apikeys::PostgresStore again(*pg, options_for(schema));
    CHECK(again.find(apikeys_test::contract::public_key(1)));
    const std::string fresh = janitor.make();
    std::atomic<int> failures{0};
    std::vector<std::thread> openers;
    for (int i = 0; i < 4; ++i) {
      openers.emplace_back([&] {
        try {
          apikeys::PostgresStore s(*pg, options_for(fresh));
          (void)s.list(alice);
        } catch (...) {
          ++failures;
        }
      });
    }
    for (auto& t : openers) t.join();
    CHECK(failures.load() == 0);
  }
  SECTION("a bad schema name is refused before any I/O") {
    CHECK(error_code_of([&] { apikeys::PostgresStore s(*pg, options_for("bad name;")); }) ==
          ErrorCode::invalid_argument);
  }
}

TEST_CASE("PostgresStore: validation and management survive a server restart mid-run",
          "[servers][postgres][faults]") {
  const auto pg = apikeys_test::test_pg();
  if (!pg || !apikeys_test::have_controls({"APIKEYS_TEST_PG_RESTART"})) return;
  SchemaJanitor janitor(*pg);
  auto store = std::make_shared<apikeys::PostgresStore>(*pg, options_for(janitor.make()));
  apikeys::KeyManager manager(store, hasher(),
                              manager_options(std::make_shared<apikeys::MemoryCache>()));
  const apikeys::Uuid account = apikeys_test::account_id(7);

  std::vector<apikeys::CreatedKey> keys;
  for (int i = 0; i < 12; ++i)
    keys.push_back(manager.create(account, request("key " + std::to_string(i))));
  for (int i = 0; i < 4; ++i)
    manager.revoke(account, keys[static_cast<std::size_t>(i)].info.key_id);

  // Validators run throughout: a revoked key is never valid, an active one is valid
  // or (while the server is away) error, nothing else.
  std::atomic<bool> stop{false};
  std::atomic<int> wrong{0};
  std::atomic<int> errors{0};
  std::atomic<int> checks{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < 2; ++t) {
    threads.emplace_back([&, t] {
      std::size_t i = static_cast<std::size_t>(t);
      while (!stop.load()) {
        const auto& k = keys[i++ % keys.size()];
        const bool revoked = (i - 1) % keys.size() < 4;
        const auto r = manager.validate(k.info.public_key, k.secret_key.reveal());
        ++checks;
        if (r.code == ValidationCode::error) {
          ++errors;
        } else if (r.code != (revoked ? ValidationCode::revoked : ValidationCode::valid)) {
          ++wrong;
        }
        std::this_thread::sleep_for(milliseconds(2));
      }
    });
  }
  std::this_thread::sleep_for(milliseconds(300));
  REQUIRE(apikeys_test::server_control("APIKEYS_TEST_PG_RESTART"));

  // Management recovers: pooled connections died with the server and are replaced.
  bool created = apikeys_test::eventually(
      [&] {
        try {
          (void)manager.create(account, request("after restart"));
          return true;
        } catch (const apikeys::Error& e) {
          CHECK((e.code() == ErrorCode::busy || e.code() == ErrorCode::storage));
          return false;
        }
      },
      std::chrono::seconds(20));
  CHECK(created);
  // Validation recovers for every key, cached or not.
  const bool all_ok = apikeys_test::eventually(
      [&] {
        for (std::size_t i = 0; i < keys.size(); ++i) {
          const auto r = manager.validate(keys[i].info.public_key, keys[i].secret_key.reveal());
          if (r.code != (i < 4 ? ValidationCode::revoked : ValidationCode::valid)) return false;
        }
        return true;
      },
      std::chrono::seconds(20));
  stop = true;
  for (auto& t : threads) t.join();
  CHECK(all_ok);
  CHECK(wrong.load() == 0);
  CHECK(checks.load() > 0);
  // Nothing lost: every key (and the one made after the restart) is still listed.
  CHECK(manager.list(account).size() == keys.size() + 1);
  const auto revoked = manager.revoke(account, keys[5].info.key_id);
  CHECK(revoked.status == apikeys::KeyStatus::revoked);
  CHECK(manager.validate(keys[5].info.public_key, keys[5].secret_key.reveal()).code ==
        ValidationCode::revoked);
  WARN("PostgreSQL restart: " << checks.load() << " validations during the run, " << errors.load()
                              << " answered error while the server was away");
}

TEST_CASE("PostgresStore: a pooled connection the server closed fails no call",
          "[servers][postgres][faults]") {
  const auto pg = apikeys_test::test_pg();
  if (!pg) return;
  SchemaJanitor janitor(*pg);
  const std::string app = apikeys_test::unique_name("apikeys_app");
  const std::string store_schema = janitor.make();
  apikeys::PostgresStore store(*pg + " application_name=" + app, options_for(store_schema));
  const apikeys::Uuid account = apikeys_test::account_id(8);
  store.insert(record(1, account));
  REQUIRE(store.find(apikeys_test::contract::public_key(1)));
  // What a server restart, an idle timeout or a proxy does to the idle pool. Done once
  // the close has reached the store's end: a backend leaves pg_stat_activity before its
  // process exits and its socket closes, and a write sent in between fails (writes are
  // not retried), which is a race of the test's making, not a close the store missed.
  // A local server's backends are waited for until their processes are gone; a remote
  // server's pids name no local postgres process and are not waited for.
  const auto close_pool = [&] {
    const std::string backends =
        "FROM pg_stat_activity WHERE application_name = '" + app + "' AND pid <> pg_backend_pid()";
    const auto rows = run_sql(*pg, "SELECT pid, pg_terminate_backend(pid) " + backends);
    REQUIRE(apikeys_test::eventually(
        [&] { return run_sql(*pg, "SELECT count(*) " + backends)[0][0] == "0"; }));
    for (const auto& row : rows) {
      REQUIRE(apikeys_test::eventually([&] {
        std::ifstream comm("/proc/" + row[0] + "/comm");
        std::string name;
        return !(comm >> name) || name.rfind("postgres", 0) != 0;
      }));
    }
  };

  SECTION("a read is retried on a fresh connection") {
    close_pool();
    const auto found = store.find(apikeys_test::contract::public_key(1));
    REQUIRE(found);
    CHECK(found->info.key_id == record(1, account).info.key_id);
    close_pool();
    CHECK_FALSE(store.find_for_validation(apikeys_test::contract::public_key(2)));
    close_pool();
    CHECK(store.list(account).size() == 1);
  }
  SECTION("a read is retried on a connection that has only ever failed") {
    // A fresh store whose one call so far was refused (a duplicate): its connection
    // went back to the pool without serving a call, and may die there all the same.
    apikeys::PostgresStore second(*pg + " application_name=" + app, options_for(store_schema));
    CHECK_THROWS(second.insert(record(1, account)));
    close_pool();
    CHECK(second.find(apikeys_test::contract::public_key(1)));
  }
  SECTION("a write that is not retried finds it closed and opens another") {
    for (std::uint32_t n = 2; n < 12; ++n) {  // each close seen, however it arrives
      close_pool();
      store.insert(record(n, account));
    }
    close_pool();
    CHECK(store.set_status(account, record(2, account).info.key_id, apikeys::KeyStatus::revoked));
    CHECK(store.list(account).size() == 11);
  }
}

// README, "Failure behaviour": no call waits longer than its configured bounds, also
// when the server stops answering in the middle of a call on a connection it had
// accepted (a stalled host, a frozen VM): the client's own statement deadline ends it.
// The server's backend for the store's pooled connection is stopped (SIGSTOP), which
// needs a server on this machine that this user may signal.
namespace {

// The server process behind a store's one connection, which a test stops (SIGSTOP) to
// make the server stall mid-call. Whatever becomes of the test (a crash, a timeout's
// SIGKILL), the backend runs again within 10 s: a stopped backend would hold its locks
// and stall the server's stop. And at once when this object dies, however the test ends.
class StoppableBackend {
 public:
  // `app` is the application_name of the store's connections.
  StoppableBackend(const std::string& pg, const std::string& app) {
    const auto rows = run_sql(pg, "SELECT pid FROM pg_stat_activity WHERE application_name = '" +
                                      app + "' AND pid <> pg_backend_pid()");
    REQUIRE(rows.size() == 1);
    pid_text_ = rows[0][0];
    pid_ = static_cast<pid_t>(std::stol(pid_text_));
    // A server elsewhere (another host, a container) has pids that are not this
    // machine's: only a process that runs in the server's data directory is signalled.
    std::error_code ec;
    const std::filesystem::path cwd =
        std::filesystem::read_symlink("/proc/" + pid_text_ + "/cwd", ec);
    const std::string data_dir = run_sql(pg, "SHOW data_directory")[0][0];
    local_ = !ec && cwd == std::filesystem::path(data_dir);
  }
  ~StoppableBackend() { resume(); }
  StoppableBackend(const StoppableBackend&) = delete;
  StoppableBackend& operator=(const StoppableBackend&) = delete;

  // Stops the backend; false (with a warning, or a failure when servers are required)
  // when this process may not.
  bool stop() {
    if (!local_) {
      WARN("SKIPPED: the server's backend is not a process of this machine we may inspect");
      return false;
    }
    const std::string resume_later = "sleep 10; kill -CONT " + pid_text_ + " 2>/dev/null";
    std::vector<char*> argv{const_cast<char*>("sh"), const_cast<char*>("-c"),
                            const_cast<char*>(resume_later.c_str()), nullptr};
    pid_t watchdog = 0;
    REQUIRE(posix_spawn(&watchdog, "/bin/sh", nullptr, nullptr, argv.data(), environ) == 0);
    if (::kill(pid_, SIGSTOP) != 0) {
      const int error = errno;
      if (apikeys_test::servers_required()) {
        FAIL("cannot stop the server's backend " << pid_ << ": " << std::strerror(error));
      }
      WARN("SKIPPED: the server's backend cannot be signalled: " << std::strerror(error));
      return false;
    }
    stopped_ = true;
    return true;
  }

  void resume() {
    if (stopped_) ::kill(pid_, SIGCONT);
    stopped_ = false;
  }

 private:
  std::string pid_text_;
  pid_t pid_ = 0;
  bool local_ = false;
  bool stopped_ = false;
};

}  // namespace

TEST_CASE("PostgresStore: a server that stops answering mid-call costs one statement_timeout",
          "[servers][postgres][faults]") {
  const auto pg = apikeys_test::test_pg();
  if (!pg) return;
  SchemaJanitor janitor(*pg);
  const std::string app = apikeys_test::unique_name("apikeys_app");
  auto store = std::make_shared<apikeys::PostgresStore>(*pg + " application_name=" + app,
                                                        options_for(janitor.make()));
  const apikeys::Uuid account = apikeys_test::account_id(8);
  store->insert(record(1, account));
  REQUIRE(store->find(apikeys_test::contract::public_key(1)));  // one pooled connection
  StoppableBackend backend(*pg, app);
  if (!backend.stop()) return;

  apikeys::ValidatorOptions vo;
  vo.record_last_use = false;
  vo.revision_poll_interval = milliseconds(0);
  const apikeys::Validator validator(store, hasher(), vo);
  const auto t0 = std::chrono::steady_clock::now();
  const auto r =
      validator.validate(apikeys_test::contract::public_key(1), "sk_" + std::string(32, 'S'));
  const auto took = std::chrono::steady_clock::now() - t0;
  CHECK(r.code == ValidationCode::error);
  // statement_timeout is 2 s (options_for); a stalled call is not retried.
  CHECK(took >= milliseconds(1500));
  CHECK(took < milliseconds(2000 + 1500));
  backend.resume();
  // The stalled connection was dropped: the next call opens another and succeeds.
  CHECK(store->find(apikeys_test::contract::public_key(1)));
}

TEST_CASE("PostgresStore: server down answers error, management fails clearly, all resumes",
          "[servers][postgres][faults]") {
  const auto pg = apikeys_test::test_pg();
  if (!pg || !apikeys_test::have_controls({"APIKEYS_TEST_PG_STOP", "APIKEYS_TEST_PG_START"}))
    return;
  SchemaJanitor janitor(*pg);
  auto store = std::make_shared<apikeys::PostgresStore>(*pg, options_for(janitor.make()));
  // Two validating nodes: one polling the revision (the default), one not.
  apikeys::KeyManager polling(store, hasher(),
                              manager_options(std::make_shared<apikeys::MemoryCache>()));
  apikeys::KeyManager quiet(
      store, hasher(), manager_options(std::make_shared<apikeys::MemoryCache>(), milliseconds(0)));
  const apikeys::Uuid account = apikeys_test::account_id(8);
  const auto cached = polling.create(account, request("cached"));
  const auto uncached = polling.create(account, request("uncached"));
  const auto gone = polling.create(account, request("revoked before the outage"));
  polling.revoke(account, gone.info.key_id);
  REQUIRE(polling.validate(cached.info.public_key, cached.secret_key.reveal()).ok());
  REQUIRE(quiet.validate(cached.info.public_key, cached.secret_key.reveal()).ok());

  bool started = true;
  struct Restart {  // bring the server back even if a REQUIRE below fails
    bool& started;
    ~Restart() {
      if (!started)
        (void)std::system(
            (std::string(std::getenv("APIKEYS_TEST_PG_START")) + " >/dev/null 2>&1").c_str());
    }
  } restart{started};
  started = false;
  REQUIRE(apikeys_test::server_control("APIKEYS_TEST_PG_STOP"));

  // Not cached: error (fail closed), and promptly: within the configured timeouts.
  const auto t0 = std::chrono::steady_clock::now();
  const auto r = polling.validate(uncached.info.public_key, uncached.secret_key.reveal());
  const auto took = std::chrono::steady_clock::now() - t0;
  CHECK(r.code == ValidationCode::error);
  CHECK(took < milliseconds(2000 + 2000 + 1000));
  CHECK(quiet.validate(uncached.info.public_key, uncached.secret_key.reveal()).code ==
        ValidationCode::error);

  // Cached as valid, without revision polling: still valid within its TTL (nobody can
  // revoke while the store is down). With polling, the validator cannot tell whether
  // keys changed, so it drops its cache at the next poll and answers error.
  CHECK(quiet.validate(cached.info.public_key, cached.secret_key.reveal()).ok());
  CHECK(apikeys_test::eventually(
      [&] {
        return polling.validate(cached.info.public_key, cached.secret_key.reveal()).code ==
               ValidationCode::error;
      },
      std::chrono::seconds(5)));

  // Management calls fail with a clear, coded error; none of them crashes or hangs.
  for (const auto& call : std::vector<std::function<void()>>{
           [&] { (void)polling.create(account, request("during the outage")); },
           [&] { (void)polling.list(account); },
           [&] { (void)polling.revoke(account, cached.info.key_id); }}) {
    try {
      call();
      FAIL("a management call succeeded with the server down");
    } catch (const apikeys::Error& e) {
      CHECK(e.code() == ErrorCode::busy);
      CHECK(std::string(e.what()).find("PostgresStore") != std::string::npos);
    }
  }

  REQUIRE(apikeys_test::server_control("APIKEYS_TEST_PG_START"));
  started = true;
  CHECK(apikeys_test::eventually(
      [&] { return polling.validate(uncached.info.public_key, uncached.secret_key.reveal()).ok(); },
      std::chrono::seconds(20)));
  CHECK(polling.validate(cached.info.public_key, cached.secret_key.reveal()).ok());
  CHECK(polling.validate(gone.info.public_key, gone.secret_key.reveal()).code ==
        ValidationCode::revoked);
  // Nothing lost, nothing half-done: exactly the three keys, the failed revoke not applied.
  const auto listed = polling.list(account);
  CHECK(listed.size() == 3);
  for (const auto& k : listed) {
    CHECK(k.status == (k.key_id == gone.info.key_id ? apikeys::KeyStatus::revoked
                                                    : apikeys::KeyStatus::active));
  }
  const auto after = polling.create(account, request("after the outage"));
  CHECK(quiet.validate(after.info.public_key, after.secret_key.reveal()).ok());
}

namespace {

// A connection string with the password it carries (somewhere in it, however mangled).
struct Conninfo {
  std::string text;
  std::string password;
};

// The user name every connection string below carries: not secret, but a value of the
// string, and none of those is ever quoted.
constexpr const char* kUser = "apikeys_app_user";

// What `conninfo` throws when a PostgresStore is opened with it (fails the test if
// nothing is thrown).
std::optional<apikeys::Error> open_error(const std::string& conninfo,
                                         milliseconds connect_timeout = milliseconds(2000)) {
  apikeys::PostgresStoreOptions o;
  o.connect_timeout = connect_timeout;
  try {
    apikeys::PostgresStore store(conninfo, o);
  } catch (const apikeys::Error& e) {
    return e;
  }
  FAIL("PostgresStore opened with " << conninfo);
  return std::nullopt;
}

// Percent-encodes everything but unreserved characters (RFC 3986), for URIs.
std::string percent_encoded(std::string_view s) {
  std::string out;
  for (const unsigned char c : s) {
    if ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '-' ||
        c == '.' || c == '_' || c == '~') {
      out += static_cast<char>(c);
    } else {
      char digits[2];
      apikeys::detail::hex_encode(&c, 1, digits, apikeys::detail::HexCase::upper);
      out += '%';
      out.append(digits, 2);
    }
  }
  return out;
}

// A key=value value in single quotes, with \ and ' escaped.
std::string conninfo_value(std::string_view s) {
  std::string out = "'";
  for (const char c : s) {
    if (c == '\\' || c == '\'') out += '\\';
    out += c;
  }
  return out + "'";
}

}  // namespace

// libpq's own messages quote the offending token of a malformed string, which is often
// the password itself (a '%' not followed by two hex digits, a space or a quote that
// was not escaped). None of this needs a server: each fails before any I/O.
TEST_CASE(
    "PostgresStore: a malformed connection string is invalid_argument, its message quotes none of it",
    "[servers][postgres][credentials]") {
  const std::string u = kUser;
  const std::vector<Conninfo> malformed = {
      // URIs: a bad percent-encoding in the password, in a query parameter, and a
      // query parameter cut in two by an unencoded '&'.
      {"postgresql://" + u + ":Tr0ub4dor%zz3@127.0.0.1:1/app", "Tr0ub4dor%zz3"},
      {"postgresql://" + u + "@127.0.0.1:1/app?password=Tr0ub4dor%2", "Tr0ub4dor%2"},
      {"postgresql://" + u + "@127.0.0.1:1/app?password=Tr0u&b4dor", "Tr0u&b4dor"},
      // key=value: spaces not quoted (one piece then lacks '=', or names an option),
      // a quote not closed, a quote inside quotes not escaped, a bare value.
      {"host=127.0.0.1 port=1 user=" + u + " password=correct horse battery staple dbname=app",
       "correct horse battery staple"},
      {"host=127.0.0.1 port=1 user=" + u + " password=Tr0ub 4dor=x%3 dbname=app", "Tr0ub 4dor=x%3"},
      {"host=127.0.0.1 port=1 user=" + u + " password='Tr0ub 4dor=%3 dbname=app", "Tr0ub 4dor=%3"},
      {"host=127.0.0.1 port=1 user=" + u + " password='it's-a-Secr3t' dbname=app", "it's-a-Secr3t"},
      {"host=127.0.0.1 port=1 user=" + u + " Tr0ub4dor%zz3", "Tr0ub4dor%zz3"},
  };
  for (const auto& c : malformed) {
    const auto e = open_error(c.text);
    REQUIRE(e);
    INFO("connection string: " << c.text << "\nmessage: " << e->what());
    CHECK(e->code() == ErrorCode::invalid_argument);
    CHECK(apikeys_test::leaked_piece(e->what(), c.password).empty());
    CHECK(apikeys_test::leaked_piece(e->what(), kUser).empty());
    CHECK(std::string(e->what()).find("malformed connection string") != std::string::npos);
  }
}

// A well-formed string can still carry a piece of a password in another field (an
// unencoded '/' in a URI's password ends the host part: the rest becomes the port), and
// libpq quotes a bad option value when it connects. Still no I/O: the value is checked
// before any address is looked up.
TEST_CASE("PostgresStore: a bad connection option value is reported without quoting it",
          "[servers][postgres][credentials]") {
  const std::string u = kUser;
  const std::vector<Conninfo> bad_values = {
      {"postgresql://" + u + ":Tr0ub/4dor@127.0.0.1:1/app", "Tr0ub/4dor"},
      {"host=127.0.0.1 port=Tr0ub4dor%zz3 user=" + u, "Tr0ub4dor%zz3"},
      {"host=127.0.0.1 port=1 user=" + u + " sslmode=Tr0ub4dor", "Tr0ub4dor"},
  };
  for (const auto& c : bad_values) {
    const auto e = open_error(c.text);
    REQUIRE(e);
    INFO("connection string: " << c.text << "\nmessage: " << e->what());
    CHECK(apikeys_test::leaked_piece(e->what(), c.password).empty());
    CHECK(apikeys_test::leaked_piece(e->what(), kUser).empty());
    CHECK(std::string(e->what()).find("PostgresStore") != std::string::npos);
  }
}

// APIKEYS_TEST_PG_PASSWORD names a role that must give a password (scripts/servers.sh
// sets one up); no password is right for it.
TEST_CASE("PostgresStore: a wrong password is refused without echoing the password or the user",
          "[servers][postgres][credentials]") {
  const auto needs_password =
      apikeys_test::server_env("APIKEYS_TEST_PG_PASSWORD", "PostgreSQL role that needs a password");
  if (!needs_password) return;
  // Its host, port, user and database, to write the same target as a URI.
  char* err = nullptr;
  PQconninfoOption* parsed = PQconninfoParse(needs_password->c_str(), &err);
  if (err != nullptr) PQfreemem(err);
  REQUIRE(parsed != nullptr);
  std::string host, port, user, dbname;
  for (PQconninfoOption* o = parsed; o->keyword != nullptr; ++o) {
    const std::string value = o->val != nullptr ? o->val : "";
    const std::string_view k = o->keyword;
    if (k == "host") host = value;
    if (k == "port") port = value;
    if (k == "user") user = value;
    if (k == "dbname") dbname = value;
  }
  PQconninfoFree(parsed);
  REQUIRE(!user.empty());

  const std::string password = "Tr0ub4dor&3 %zz 'q' =x\\y";
  const std::vector<std::string> attempts = {
      *needs_password + " password=" + conninfo_value(password),
      "postgresql://" + percent_encoded(user) + ":" + percent_encoded(password) + "@" + host + ":" +
          port + "/" + dbname + "?connect_timeout=5",
  };
  for (const auto& conninfo : attempts) {
    const auto e = open_error(conninfo);
    REQUIRE(e);
    INFO("connection string: " << conninfo << "\nmessage: " << e->what());
    CHECK(e->code() == ErrorCode::busy);
    CHECK(std::string(e->what()).find("authentication failed") != std::string::npos);
    CHECK(apikeys_test::leaked_piece(e->what(), password).empty());
    CHECK(apikeys_test::leaked_piece(e->what(), percent_encoded(password)).empty());
    CHECK(apikeys_test::leaked_piece(e->what(), user).empty());
  }
}

// The process's open file descriptors (the directory's own included, the same each time).
std::size_t open_fds() {
  return static_cast<std::size_t>(std::distance(
      std::filesystem::directory_iterator("/proc/self/fd"), std::filesystem::directory_iterator()));
}

// A connect that fails half-way (here: a listener that accepts but never answers, so the
// client-side deadline ends it) must close its socket. No server needed.
TEST_CASE("PostgresStore: a failed connection attempt closes its socket",
          "[servers][postgres][store]") {
  const int listener = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  REQUIRE(listener >= 0);
  struct Close {
    int fd;
    ~Close() { ::close(fd); }
  } close_listener{listener};
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  a.sin_port = 0;
  REQUIRE(::bind(listener, reinterpret_cast<sockaddr*>(&a), sizeof a) == 0);
  REQUIRE(::listen(listener, 16) == 0);
  socklen_t len = sizeof a;
  REQUIRE(::getsockname(listener, reinterpret_cast<sockaddr*>(&a), &len) == 0);
  const std::string conninfo = "host=127.0.0.1 port=" + std::to_string(ntohs(a.sin_port)) +
                               " user=apikeys dbname=apikeys sslmode=disable gssencmode=disable";

  const std::size_t before = open_fds();
  for (int i = 0; i < 3; ++i) {
    const auto e = open_error(conninfo, milliseconds(200));
    REQUIRE(e);
    CHECK(e->code() == ErrorCode::busy);
    CHECK(std::string(e->what()).find("timed out") != std::string::npos);
  }
  CHECK(open_fds() == before);
}

// The connection string may hold a password: the store's copy is wiped before it is
// freed. (The server trusts this client, so the password is carried but never checked.)
TEST_CASE("PostgresStore wipes its copy of the connection string when it dies",
          "[servers][postgres][credentials]") {
  const auto pg = apikeys_test::test_pg();
  if (!pg) return;
  SchemaJanitor janitor(*pg);
  const std::string password = "Wipe-me-pg-7Qz3vK9x";
  const std::string conninfo = *pg + " password=" + conninfo_value(password);
  const auto options = options_for(janitor.make());
  std::size_t unwiped = 0;
  {
    apikeys_test::alloc_probe::WatchFrees watch(password);
    auto store = std::make_unique<apikeys::PostgresStore>(conninfo, options);
    CHECK_FALSE(store->find(apikeys_test::contract::public_key(1)));  // a pooled connection too
    store.reset();
    unwiped = apikeys_test::alloc_probe::unwiped_frees();
  }
  CHECK(unwiped == 0);
}

// A connection goes back to the pool in a destructor: an allocation failing there would
// be std::terminate. The first return to a fresh pool is the one that would grow it.
// The call is held in the server (the table locked by another session) while every
// allocation is made to fail, then let go; the call and the return must still work.
TEST_CASE("PostgresStore: returning a connection to the pool allocates nothing",
          "[servers][postgres][store]") {
  const auto pg = apikeys_test::test_pg();
  if (!pg) return;
  SchemaJanitor janitor(*pg);
  const std::string schema = janitor.make();
  auto options = options_for(schema);
  options.statement_timeout = milliseconds(30'000);  // the lock is held far less than this
  apikeys::PostgresStore store(*pg, options);        // its migrating connection is not pooled

  PGconn* locker = PQconnectdb(pg->c_str());
  struct Finish {
    PGconn* c;
    ~Finish() { PQfinish(c); }
  } finish{locker};
  REQUIRE(PQstatus(locker) == CONNECTION_OK);
  auto run = [&](const std::string& sql) {
    PGresult* r = PQexec(locker, sql.c_str());
    const ExecStatusType st = PQresultStatus(r);
    std::string first = st == PGRES_TUPLES_OK && PQntuples(r) == 1 ? PQgetvalue(r, 0, 0) : "";
    PQclear(r);
    REQUIRE((st == PGRES_COMMAND_OK || st == PGRES_TUPLES_OK));
    return first;
  };
  run("BEGIN");
  run("LOCK TABLE \"" + schema + "\".apikeys_keys IN ACCESS EXCLUSIVE MODE");

  std::atomic<int> outcome{0};  // 1: found nothing (right), 2: found something, 3: threw
  std::thread caller([&] {
    try {
      outcome = store.find(apikeys_test::contract::public_key(1)) ? 2 : 1;
    } catch (...) {
      outcome = 3;
    }
  });
  const std::string waiting = "SELECT count(*) FROM pg_locks WHERE NOT granted AND relation = '\"" +
                              schema + "\".apikeys_keys'::regclass";
  const bool blocked =
      apikeys_test::eventually([&] { return run(waiting) == "1"; }, std::chrono::seconds(20));
  {
    // From here until the caller is done, only libpq (malloc) allocates on this thread.
    std::optional<apikeys_test::alloc_probe::FailAllocations> no_allocations;
    if (blocked) no_allocations.emplace();
    PQclear(PQexec(locker, "COMMIT"));
    caller.join();
  }
  REQUIRE(blocked);
  CHECK(outcome.load() == 1);
  // The connection went back and serves the next call.
  CHECK_FALSE(store.find(apikeys_test::contract::public_key(2)));
}

TEST_CASE("PostgresStore: a last-use UPDATE waiting on a row lock never delays the revision poll",
          "[servers][postgres][revision]") {
  const auto pg = apikeys_test::test_pg();
  if (!pg) return;
  SchemaJanitor janitor(*pg);
  const std::string schema = janitor.make();

  // This node: polls the revision and flushes last use every 20 ms; its statements may
  // wait up to 10 s for a lock, far longer than the rejection may take.
  apikeys::PostgresStoreOptions so = options_for(schema);
  so.statement_timeout = milliseconds(10'000);
  auto watch = std::make_shared<apikeys_test::LastUseWatch>(
      std::make_shared<apikeys::PostgresStore>(*pg, so));
  apikeys::KeyManagerOptions node_opts =
      manager_options(std::make_shared<apikeys::MemoryCache>(), milliseconds(20));
  node_opts.validation.flush_interval = milliseconds(20);
  apikeys::KeyManager node(watch, hasher(), node_opts);
  // Another node, which revokes.
  apikeys::KeyManagerOptions other_opts;
  other_opts.validation.record_last_use = false;
  apikeys::KeyManager other(std::make_shared<apikeys::PostgresStore>(*pg, options_for(schema)),
                            hasher(), other_opts);

  const apikeys::Uuid account = apikeys_test::account_id(11);
  const auto used = node.create(account, request("used"));
  const auto revoked = node.create(account, request("revoked elsewhere"));
  REQUIRE(node.validate(revoked.info.public_key, revoked.secret_key.reveal()).ok());  // cached
  node.validator().flush_last_use();  // its last use written: nothing queued

  // A third session locks the used key's row. Declared after the node, so it ends
  // (releasing the lock) before the node's destructor waits for its stuck write; the
  // server ends it too if the test dies holding it.
  struct Session {
    PGconn* c;
    ~Session() { PQfinish(c); }
  } holder{PQconnectdb(pg->c_str())};
  REQUIRE(PQstatus(holder.c) == CONNECTION_OK);
  const auto exec = [&](const std::string& sql) {
    PGresult* r = PQexec(holder.c, sql.c_str());
    const ExecStatusType s = PQresultStatus(r);
    std::string value = s == PGRES_TUPLES_OK && PQntuples(r) > 0 ? PQgetvalue(r, 0, 0) : "";
    INFO(sql << ": " << PQresultErrorMessage(r));
    PQclear(r);
    REQUIRE((s == PGRES_COMMAND_OK || s == PGRES_TUPLES_OK));
    return value;
  };
  exec(
      "SET statement_timeout = 5000; SET lock_timeout = 5000; SET idle_in_transaction_session_timeout = 30000");
  exec("BEGIN");
  exec("SELECT 1 FROM \"" + schema + "\".apikeys_keys WHERE key_id = '" +
       used.info.key_id.to_string() + "' FOR UPDATE");

  const int begun = watch->last_use_begun.load();
  const int finished = watch->last_use_finished.load();
  REQUIRE(node.validate(used.info.public_key, used.secret_key.reveal()).ok());
  REQUIRE(watch->wait_begun_beyond(begun, milliseconds(5000)));
  // The node's UPDATE is waiting on our lock, the server says (pg_locks is read afresh
  // each time; pg_stat_activity would be frozen for the rest of our transaction).
  REQUIRE(apikeys_test::eventually(
      [&] {
        return exec(
                   "SELECT count(DISTINCT pid) FROM pg_locks WHERE NOT granted"
                   " AND pg_backend_pid() = ANY(pg_blocking_pids(pid))") == "1";
      },
      milliseconds(5000)));

  // The other node revokes the cached key; this node must reject it within many polls,
  // while its last-use write still waits.
  other.revoke(account, revoked.info.key_id);
  const auto t0 = std::chrono::steady_clock::now();
  const bool rejected = apikeys_test::eventually(
      [&] {
        return node.validate(revoked.info.public_key, revoked.secret_key.reveal()).code ==
               ValidationCode::revoked;
      },
      milliseconds(2000));
  const auto ms =
      std::chrono::duration_cast<milliseconds>(std::chrono::steady_clock::now() - t0).count();
  CHECK(rejected);
  CHECK(watch->last_use_finished.load() == finished);  // still waiting on the lock
  if (rejected)
    WARN("revoked on another node, rejected here after " << ms
                                                         << " ms, while a last-use write waited");

  exec("ROLLBACK");
  node.validator().flush_last_use();  // after the stuck one, which now gets through
  CHECK(other.list(account).size() == 2);
  for (const auto& k : other.list(account)) CHECK(k.last_used_at.has_value());
  CHECK(node.validator().last_use_failures() == 0);
}

namespace {

using apikeys::KeyStatus;
using apikeys::WriteOutcome;
using apikeys_test::contract::at;
using apikeys_test::contract::ids_of;
using apikeys_test::contract::key_id;
using apikeys_test::contract::public_key;

// contract::record() as KeyManager::create() would make it: updated_at = created_at.
apikeys::KeyRecord made(std::uint32_t n, const apikeys::Uuid& account, std::int64_t offset_ms = 0) {
  apikeys::KeyRecord r = record(n, account, offset_ms);
  r.info.updated_at = r.info.created_at;
  return r;
}

std::vector<apikeys::Uuid> ids(std::initializer_list<std::uint32_t> ns) {
  std::vector<apikeys::Uuid> out;
  for (const auto n : ns) out.push_back(key_id(n));
  return out;
}

// Walks the account's keys `limit` at a time, each page starting after the last key of
// the one before; returns them all.
std::vector<apikeys::Uuid> walk_pages(apikeys::Store& store, const apikeys::Uuid& account,
                                      std::size_t limit, std::optional<KeyStatus> status) {
  std::vector<apikeys::Uuid> out;
  std::optional<apikeys::PagePosition> after;
  for (int pages = 0; pages < 100; ++pages) {
    const auto page = store.list_page(account, after, limit, status);
    CHECK(page.size() <= limit);
    for (const auto& k : page) out.push_back(k.key_id);
    if (page.size() < limit) break;
    after = apikeys::PagePosition{page.back().created_at, page.back().key_id};
  }
  return out;
}

}  // namespace

TEST_CASE("PostgresStore: get, list_page, replace, rotate and revoke_all on a real server",
          "[servers][postgres][store]") {
  const auto pg = apikeys_test::test_pg();
  if (!pg) return;
  SchemaJanitor janitor(*pg);
  apikeys::PostgresStore store(*pg, options_for(janitor.make()));
  const apikeys::Uuid alice = apikeys_test::account_id(1);
  const apikeys::Uuid bob = apikeys_test::account_id(2);
  // Alice's keys in page order: 1, then 4, 3, 2 (one millisecond: the larger id first),
  // 5, 6. Bob has one.
  const std::vector<std::pair<std::uint32_t, std::int64_t>> order = {
      {2, -1000}, {1, 0}, {5, -2000}, {4, -1000}, {6, -3000}, {3, -1000}};
  for (const auto& [n, offset] : order) store.insert(made(n, alice, offset));
  store.insert(made(20, bob, 0));
  const std::uint64_t r0 = store.revision();

  SECTION("get answers only for the account's own keys") {
    const auto got = store.get(alice, key_id(3));
    REQUIRE(got);
    apikeys_test::contract::check_same_info(*got, record(3, alice, -1000).info);
    CHECK(got->version == 1);
    CHECK(got->updated_at == got->created_at);
    CHECK_FALSE(store.get(alice, key_id(20)));  // Bob's
    CHECK_FALSE(store.get(bob, key_id(3)));     // Alice's
    CHECK_FALSE(store.get(alice, key_id(99)));  // nobody's
    CHECK(store.get(bob, key_id(20)));
  }

  SECTION("list_page pages by value, newest first, then the larger id") {
    CHECK(ids_of(store.list_page(alice, std::nullopt, 100, std::nullopt)) ==
          ids({1, 4, 3, 2, 5, 6}));
    for (const std::size_t limit : {1, 2, 4, 6, 7}) {
      INFO("limit " << limit);
      CHECK(walk_pages(store, alice, limit, std::nullopt) == ids({1, 4, 3, 2, 5, 6}));
    }
    CHECK(store.list_page(alice, std::nullopt, 0, std::nullopt).empty());
    CHECK(ids_of(store.list_page(bob, std::nullopt, 100, std::nullopt)) == ids({20}));
    // A position from another account's key still only lists this account's keys.
    CHECK(
        ids_of(store.list_page(bob, apikeys::PagePosition{at(-1000), key_id(4)}, 100, std::nullopt))
            .empty());
    CHECK(ids_of(store.list_page(alice, apikeys::PagePosition{at(-1000), key_id(4)}, 100,
                                 std::nullopt)) == ids({3, 2, 5, 6}));

    // The status filter, alone and with a position.
    REQUIRE(store.set_status(alice, key_id(3), KeyStatus::revoked));
    REQUIRE(store.set_status(alice, key_id(5), KeyStatus::disabled));
    CHECK(walk_pages(store, alice, 2, KeyStatus::active) == ids({1, 4, 2, 6}));
    CHECK(walk_pages(store, alice, 1, KeyStatus::revoked) == ids({3}));
    CHECK(walk_pages(store, alice, 1, KeyStatus::disabled) == ids({5}));
    CHECK(ids_of(store.list_page(alice, apikeys::PagePosition{at(-1000), key_id(4)}, 100,
                                 KeyStatus::active)) == ids({2, 6}));

    // Keys inserted between pages: one before the position (never shown), one after
    // (shown in its place); the keys that were there are neither skipped nor repeated.
    const auto first = store.list_page(alice, std::nullopt, 2, std::nullopt);
    REQUIRE(ids_of(first) == ids({1, 4}));
    store.insert(record(7, alice, -1000));  // sorts before 4: already passed
    store.insert(record(8, alice, -1500));  // between 2 and 5: still ahead
    const apikeys::PagePosition after{first.back().created_at, first.back().key_id};
    CHECK(ids_of(store.list_page(alice, after, 100, std::nullopt)) == ids({3, 2, 8, 5, 6}));
  }

  SECTION("replace writes the changeable fields when the version matches, and logs it") {
    apikeys::KeyInfo next = *store.get(alice, key_id(1));
    next.title = "renamed";
    next.description = "with a description";
    next.metadata = R"({"team":"billing","n":[1,2]})";
    next.scopes = {"invoices.*", "reports:read"};
    next.status = KeyStatus::disabled;
    next.expires_at = at(50'000);
    next.updated_at = at(100);
    next.rotated_to = key_id(42);
    // Not changeable: ignored.
    next.public_key = public_key(77);
    next.created_at = at(-99'000);
    next.last_used_at = at(5);
    next.rotated_from = key_id(43);
    next.version = 77;
    const auto w = store.replace(alice, next, 1);
    REQUIRE(w.outcome == WriteOutcome::applied);
    const auto check_written = [&](const apikeys::KeyInfo& k) {
      CHECK(k.key_id == key_id(1));
      CHECK(k.public_key == public_key(1));
      CHECK(k.title == "renamed");
      CHECK(k.description == "with a description");
      CHECK(k.metadata == next.metadata);
      CHECK(k.scopes == next.scopes);
      CHECK(k.status == KeyStatus::disabled);
      CHECK(k.expires_at == std::optional<apikeys::TimePoint>(at(50'000)));
      CHECK(k.updated_at == at(100));
      CHECK(k.rotated_to == std::optional<apikeys::Uuid>(key_id(42)));
      CHECK(k.created_at == at(0));
      CHECK_FALSE(k.last_used_at);
      CHECK_FALSE(k.rotated_from);
      CHECK(k.version == 2);
    };
    check_written(w.key);
    check_written(*store.get(alice, key_id(1)));
    const auto found = store.find(public_key(1));
    REQUIRE(found);
    check_written(found->info);
    CHECK(found->digest.bytes == record(1, alice).digest.bytes);
    CHECK_FALSE(store.find(public_key(77)));
    CHECK(store.revision() == r0 + 1);
    const auto changes = store.changes_since(r0);
    REQUIRE(changes);
    CHECK(changes->public_keys == std::vector<std::string>{public_key(1)});

    // A stale version: conflict, the key as it is, nothing written, nothing logged.
    apikeys::KeyInfo stale = next;
    stale.title = "lost update";
    const auto c = store.replace(alice, stale, 1);
    CHECK(c.outcome == WriteOutcome::conflict);
    check_written(c.key);
    CHECK(store.replace(alice, stale, 3).outcome == WriteOutcome::conflict);
    CHECK(store.replace(alice, stale, UINT64_MAX).outcome == WriteOutcome::conflict);
    check_written(*store.get(alice, key_id(1)));
    // Another account's key, or none: not_found (never conflict), nothing written.
    const auto other = store.replace(bob, stale, 2);
    CHECK(other.outcome == WriteOutcome::not_found);
    CHECK(other.key.public_key.empty());
    apikeys::KeyInfo nobody = stale;
    nobody.key_id = key_id(99);
    CHECK(store.replace(alice, nobody, 1).outcome == WriteOutcome::not_found);
    CHECK(store.replace(alice, nobody, UINT64_MAX).outcome == WriteOutcome::not_found);
    check_written(*store.get(alice, key_id(1)));
    CHECK(store.revision() == r0 + 1);

    // Clearing the optional fields; a NUL is refused without quoting the value.
    apikeys::KeyInfo cleared = *store.get(alice, key_id(1));
    cleared.metadata.clear();
    cleared.scopes.clear();
    cleared.expires_at.reset();
    cleared.rotated_to.reset();
    cleared.status = KeyStatus::active;
    const auto w2 = store.replace(alice, cleared, 2);
    REQUIRE(w2.outcome == WriteOutcome::applied);
    CHECK(w2.key.metadata.empty());
    CHECK(w2.key.scopes.empty());
    CHECK_FALSE(w2.key.expires_at);
    CHECK_FALSE(w2.key.rotated_to);
    CHECK(w2.key.version == 3);
    apikeys::KeyInfo nul = w2.key;
    nul.title = std::string("secret\0tail", 11);
    try {
      (void)store.replace(alice, nul, 3);
      FAIL("a title with a NUL was stored");
    } catch (const apikeys::Error& e) {
      CHECK(e.code() == ErrorCode::storage);
      CHECK(std::string(e.what()).find("secret") == std::string::npos);
    }
    CHECK(store.get(alice, key_id(1))->version == 3);
  }

  SECTION("rotate writes the old key and inserts the successor, both or neither") {
    apikeys::KeyInfo old = *store.get(alice, key_id(1));
    old.expires_at = at(500);
    old.rotated_to = key_id(50);
    old.updated_at = at(10);
    apikeys::KeyRecord successor = record(50, alice, 10);
    successor.info.rotated_from = key_id(1);
    successor.info.scopes = {"a.b"};
    successor.info.metadata = R"({"k":true})";
    successor.info.updated_at = at(10);
    successor.info.expires_at = at(500);

    SECTION("applied") {
      const auto w = store.rotate(alice, old, 1, successor);
      REQUIRE(w.outcome == WriteOutcome::applied);
      CHECK(w.key.version == 2);
      CHECK(w.key.rotated_to == std::optional<apikeys::Uuid>(key_id(50)));
      CHECK(w.key.expires_at == std::optional<apikeys::TimePoint>(at(500)));
      const auto got = store.find(public_key(50));
      REQUIRE(got);
      apikeys_test::contract::check_same_record(*got, successor);
      CHECK(got->info.rotated_from == std::optional<apikeys::Uuid>(key_id(1)));
      CHECK(got->info.scopes == successor.info.scopes);
      CHECK(got->info.metadata == successor.info.metadata);
      CHECK(got->info.version == 1);
      CHECK(store.revision() == r0 + 1);
      const auto changes = store.changes_since(r0);
      REQUIRE(changes);
      CHECK(changes->public_keys == std::vector<std::string>{public_key(1)});
    }
    SECTION("a duplicate successor: already_exists, nothing written") {
      apikeys::KeyRecord taken_pk = successor;
      taken_pk.info.public_key = public_key(2);
      apikeys::KeyRecord taken_id = successor;
      taken_id.info.key_id = key_id(3);
      for (const auto* dup : {&taken_pk, &taken_id}) {
        CHECK(error_code_of([&] { (void)store.rotate(alice, old, 1, *dup); }) ==
              ErrorCode::already_exists);
      }
      const auto kept = store.get(alice, key_id(1));
      REQUIRE(kept);
      CHECK(kept->version == 1);
      CHECK_FALSE(kept->rotated_to);
      CHECK_FALSE(kept->expires_at);
      CHECK_FALSE(store.get(alice, key_id(50)));
      CHECK(store.list(alice).size() == 6);
      CHECK(store.revision() == r0);
    }
    SECTION("a stale version or another account's key: the successor is not inserted") {
      const auto c = store.rotate(alice, old, 2, successor);
      CHECK(c.outcome == WriteOutcome::conflict);
      CHECK(c.key.version == 1);
      CHECK(store.rotate(bob, old, 1, successor).outcome == WriteOutcome::not_found);
      CHECK_FALSE(store.find(public_key(50)));
      CHECK_FALSE(store.get(alice, key_id(1))->rotated_to);
      CHECK(store.revision() == r0);
    }
  }

  SECTION("revoke_all revokes the account's other keys at once, each logged") {
    REQUIRE(store.set_status(alice, key_id(2), KeyStatus::revoked)->version == 2);
    REQUIRE(store.set_status(alice, key_id(5), KeyStatus::disabled));
    const std::uint64_t r1 = store.revision();
    const auto revoked = store.revoke_all(alice, at(9000));
    CHECK(ids_of(revoked) == ids({1, 4, 3, 5, 6}));
    for (const auto& k : revoked) {
      CHECK(k.status == KeyStatus::revoked);
      CHECK(k.version == (k.key_id == key_id(5) ? 3U : 2U));
      CHECK(k.updated_at == at(9000));
      const auto stored = store.get(alice, k.key_id);
      REQUIRE(stored);
      CHECK(stored->status == KeyStatus::revoked);
      CHECK(stored->version == k.version);
    }
    const auto two = store.get(alice, key_id(2));
    CHECK(two->version == 2);  // already revoked: untouched
    CHECK(two->updated_at == two->created_at);
    CHECK(store.get(bob, key_id(20))->status == KeyStatus::active);
    CHECK(store.revision() == r1 + 5);
    const auto changes = store.changes_since(r1);
    REQUIRE(changes);
    auto logged = changes->public_keys;
    std::sort(logged.begin(), logged.end());
    std::vector<std::string> want;
    for (const auto n : {1, 3, 4, 5, 6}) want.push_back(public_key(static_cast<std::uint32_t>(n)));
    std::sort(want.begin(), want.end());
    CHECK(logged == want);
    // Nothing left to revoke: nothing changes, nothing is logged.
    CHECK(store.revoke_all(alice, at(9500)).empty());
    CHECK(store.revision() == r1 + 5);
    CHECK(store.revoke_all(apikeys_test::account_id(3), at(9500)).empty());
  }

  SECTION("set_status adds one to the version only when the status changes") {
    CHECK(store.set_status(alice, key_id(1), KeyStatus::disabled)->version == 2);
    CHECK(store.set_status(alice, key_id(1), KeyStatus::disabled)->version == 2);
    CHECK(store.set_status(alice, key_id(1), KeyStatus::active)->version == 3);
    CHECK_FALSE(store.set_status(bob, key_id(1), KeyStatus::revoked));
    CHECK(store.get(alice, key_id(1))->status == KeyStatus::active);
  }
}

TEST_CASE("PostgresStore: revoking more keys than the change log keeps makes changes_since nullopt",
          "[servers][postgres][store]") {
  const auto pg = apikeys_test::test_pg();
  if (!pg) return;
  SchemaJanitor janitor(*pg);
  const std::string schema = janitor.make();
  apikeys::PostgresStore store(*pg, options_for(schema));
  const apikeys::Uuid alice = apikeys_test::account_id(1);
  constexpr auto kLog = apikeys::PostgresStore::kChangeLogSize;
  constexpr std::uint32_t kKeys = kLog + 3;
  // Inserted in one statement: the store's insert() one by one would take a while.
  run_sql(*pg, "INSERT INTO \"" + schema +
                   "\".apikeys_keys (key_id, account_id, public_key, digest, pepper_id, title,"
                   " description, status, created_at, updated_at) SELECT gen_random_uuid(), '" +
                   alice.to_string() +
                   "', 'pk_' || lpad(i::text, 32, 'B'), decode(repeat('ab', 32), 'hex'), 1,"
                   " 'bulk', '', 0, i, i FROM generate_series(1, " +
                   std::to_string(kKeys) + ") AS i");
  store.insert(record(1, apikeys_test::account_id(2)));
  REQUIRE(store.set_status(apikeys_test::account_id(2), key_id(1), KeyStatus::revoked));
  const std::uint64_t r0 = store.revision();

  const auto revoked = store.revoke_all(alice, at(0));
  CHECK(revoked.size() == kKeys);
  CHECK(store.revision() == r0 + kKeys);
  // Before the first of them: the log cannot tell, so nullopt (drop everything).
  CHECK_FALSE(store.changes_since(r0));
  CHECK_FALSE(store.changes_since(r0 + 2));
  // From the oldest revision the log still reaches: every key after it, none lost.
  const auto oldest = store.changes_since(r0 + 3);
  REQUIRE(oldest);
  CHECK(oldest->public_keys.size() == kLog);
  const auto last = store.changes_since(r0 + kKeys - 1);
  REQUIRE(last);
  CHECK(last->public_keys.size() == 1);
  CHECK(run_sql(*pg, "SELECT count(*) FROM \"" + schema + "\".apikeys_changes") ==
        std::vector<std::vector<std::string>>{{std::to_string(kLog)}});
}

TEST_CASE("PostgresStore: two threads replace with the same expected version, one wins",
          "[servers][postgres][store]") {
  const auto pg = apikeys_test::test_pg();
  if (!pg) return;
  SchemaJanitor janitor(*pg);
  const std::string schema = janitor.make();
  // Two stores: two pools, two server sessions racing.
  apikeys::PostgresStore a(*pg, options_for(schema));
  apikeys::PostgresStore b(*pg, options_for(schema));
  const apikeys::Uuid alice = apikeys_test::account_id(1);
  a.insert(record(1, alice));
  const std::uint64_t r0 = a.revision();
  constexpr int kRounds = 25;
  for (int round = 0; round < kRounds; ++round) {
    const auto current = a.get(alice, key_id(1));
    REQUIRE(current);
    REQUIRE(current->version == static_cast<std::uint64_t>(round + 1));
    std::atomic<int> ready{0};
    apikeys::WriteResult results[2];
    std::vector<std::thread> threads;
    for (int t = 0; t < 2; ++t) {
      threads.emplace_back([&, t] {
        apikeys::KeyInfo next = *current;
        next.title = "round " + std::to_string(round) + " by " + std::to_string(t);
        ++ready;
        while (ready.load() < 2) {
        }
        results[t] = (t == 0 ? a : b).replace(alice, next, current->version);
      });
    }
    for (auto& th : threads) th.join();
    INFO("round " << round);
    const int applied = (results[0].outcome == WriteOutcome::applied ? 1 : 0) +
                        (results[1].outcome == WriteOutcome::applied ? 1 : 0);
    REQUIRE(applied == 1);
    const int winner = results[0].outcome == WriteOutcome::applied ? 0 : 1;
    const auto& loser = results[1 - winner];
    CHECK(loser.outcome == WriteOutcome::conflict);
    // The loser sees the winner's write.
    CHECK(loser.key.version == current->version + 1);
    CHECK(loser.key.title == results[winner].key.title);
    CHECK(a.get(alice, key_id(1))->title == results[winner].key.title);
  }
  CHECK(a.get(alice, key_id(1))->version == kRounds + 1);
  CHECK(b.revision() == r0 + kRounds);
}

namespace {

// A ChangeAudit that records every call and builds a plain event from it; the call
// numbered `throw_at` (0 first) throws std::runtime_error instead. Its text fields hold
// what a PostgreSQL array literal or a careless quoting would mangle.
class RecordingAudit final : public apikeys::ChangeAudit {
 public:
  explicit RecordingAudit(int throw_at = -1) : throw_at_(throw_at) {}

  struct Call {
    std::optional<apikeys::KeyInfo> before;
    std::optional<apikeys::KeyInfo> after;
  };

  std::optional<apikeys::AuditEvent> event(const apikeys::KeyInfo* before,
                                           const apikeys::KeyInfo* after) const override {
    const int n = static_cast<int>(calls_.size());
    calls_.push_back(
        Call{before != nullptr ? std::optional<apikeys::KeyInfo>(*before) : std::nullopt,
             after != nullptr ? std::optional<apikeys::KeyInfo>(*after) : std::nullopt});
    if (n == throw_at_) throw std::runtime_error("the audit failed");
    apikeys::AuditEvent e;
    e.event_id = apikeys::Uuid::random();
    e.time = apikeys_test::contract::at(1000 + n);
    e.action = before == nullptr  ? apikeys::AuditAction::create
               : after == nullptr ? apikeys::AuditAction::remove
                                  : apikeys::AuditAction::update;
    e.context.actor.type = apikeys::ActorType::user;
    e.context.actor.id = "ops \"root\", {admin}";
    e.context.actor.detail = "back\\slash NULL \xc3\xa9";
    e.context.reason = n % 2 == 0 ? "" : "ticket, 42";
    const apikeys::KeyInfo& key = after != nullptr ? *after : *before;
    e.account_id = key.account_id;
    e.key_id = key.key_id;
    e.before = before != nullptr ? state(*before) : "{}";
    e.after = after != nullptr ? state(*after) : "{}";
    return e;
  }

  static std::string state(const apikeys::KeyInfo& k) {
    return "{\"status\":" + std::to_string(static_cast<int>(k.status)) +
           ",\"version\":" + std::to_string(k.version) + ",\"credits\":" +
           (k.credits ? std::to_string(k.credits->remaining) : std::string("null")) + "}";
  }

  [[nodiscard]] const std::vector<Call>& calls() const { return calls_; }

 private:
  int throw_at_;
  mutable std::vector<Call> calls_;
};

std::size_t audit_rows(const std::string& conninfo, const std::string& schema) {
  const auto rows =
      run_sql(conninfo, "SELECT count(*) FROM \"" + schema + "\".apikeys_audit_events");
  return static_cast<std::size_t>(std::stoull(rows.at(0).at(0)));
}

apikeys::AuditRange all_events() {
  apikeys::AuditRange r;
  r.limit = 1000;
  return r;
}

}  // namespace

TEST_CASE("PostgresStore writes each audited change's events with it, exactly as built",
          "[servers][postgres][store][audit]") {
  const auto pg = apikeys_test::test_pg();
  if (!pg) return;
  SchemaJanitor janitor(*pg);
  const std::string schema = janitor.make();
  apikeys::PostgresStore store(*pg, options_for(schema));
  CHECK(store.keeps_audit());
  const apikeys::Uuid alice = apikeys_test::account_id(1);
  const apikeys::Uuid bob = apikeys_test::account_id(2);
  using apikeys_test::contract::credits_of;
  using apikeys_test::contract::lineage_record;

  RecordingAudit audit;
  store.insert_audited(lineage_record(1, alice, credits_of(5)), audit);
  store.insert_audited(record(2, alice, 2), audit);
  store.insert_audited(record(3, bob, 3), audit);
  REQUIRE(audit.calls().size() == 3);
  CHECK_FALSE(audit.calls()[0].before);
  REQUIRE(audit.calls()[0].after);
  REQUIRE(audit.calls()[0].after->credits);  // as stored: with the lineage's credits
  CHECK(audit.calls()[0].after->credits->remaining == 5);

  apikeys::KeyInfo next = *store.get(alice, record(2, alice).info.key_id);
  next.title = "renamed";
  // A conflict or a missing key writes nothing and asks for no event.
  CHECK(store.replace_audited(alice, next, next.version + 1, audit).outcome ==
        apikeys::WriteOutcome::conflict);
  CHECK(store.replace_audited(bob, next, next.version, audit).outcome ==
        apikeys::WriteOutcome::not_found);
  CHECK(audit.calls().size() == 3);
  const auto replaced = store.replace_audited(alice, next, next.version, audit);
  REQUIRE(replaced.outcome == apikeys::WriteOutcome::applied);
  REQUIRE(audit.calls().size() == 4);
  CHECK(audit.calls()[3].before->title == "key 2");
  CHECK(audit.calls()[3].before->version == 1);
  CHECK(audit.calls()[3].after->title == "renamed");
  CHECK(audit.calls()[3].after->version == 2);

  apikeys::CreditsChange add;
  add.op = apikeys::CreditsOp::add;
  add.delta = 3;
  add.at = apikeys_test::test_start();
  const auto credited =
      store.change_credits_audited(alice, record(1, alice).info.key_id, add, audit);
  REQUIRE(credited);
  REQUIRE(audit.calls().size() == 5);
  CHECK(audit.calls()[4].before->credits->remaining == 5);
  CHECK(audit.calls()[4].after->credits->remaining == 8);
  CHECK(audit.calls()[4].before->title == audit.calls()[4].after->title);

  const auto removed = store.remove_audited(bob, record(3, bob).info.key_id, audit);
  REQUIRE(removed);
  REQUIRE(audit.calls().size() == 6);
  CHECK(audit.calls()[5].before->key_id == record(3, bob).info.key_id);
  CHECK_FALSE(audit.calls()[5].after);
  CHECK_FALSE(store.remove_audited(bob, record(3, bob).info.key_id, audit));
  CHECK(audit.calls().size() == 6);

  // Read back byte for byte, newest first; each account sees its own.
  const auto events = store.audit_events(alice, all_events());
  REQUIRE(events.size() == 4);
  for (std::size_t i = 0; i + 1 < events.size(); ++i) {
    CHECK(events[i].time > events[i + 1].time);
  }
  CHECK(events[0].context.actor.id == "ops \"root\", {admin}");
  CHECK(events[0].context.actor.detail == "back\\slash NULL \xc3\xa9");
  CHECK(events[0].context.actor.type == apikeys::ActorType::user);
  CHECK(events[0].action == apikeys::AuditAction::update);
  CHECK(events[0].before == RecordingAudit::state(*audit.calls()[4].before));
  CHECK(events[0].after == RecordingAudit::state(*audit.calls()[4].after));
  CHECK(events[3].action == apikeys::AuditAction::create);
  CHECK(events[3].before == "{}");
  CHECK(events[3].context.reason.empty());
  CHECK(events[2].context.reason == "ticket, 42");
  const auto bobs = store.audit_events(bob, all_events());
  REQUIRE(bobs.size() == 2);
  CHECK(bobs[0].action == apikeys::AuditAction::remove);
  CHECK(bobs[0].after == "{}");

  // Filters and pages.
  apikeys::AuditRange one_key = all_events();
  one_key.key_id = record(2, alice).info.key_id;
  CHECK(store.audit_events(alice, one_key).size() == 2);
  apikeys::AuditRange page = all_events();
  page.limit = 2;
  const auto first = store.audit_events(alice, page);
  REQUIRE(first.size() == 2);
  page.after = apikeys::AuditPosition{first[1].time, first[1].event_id};
  const auto second = store.audit_events(alice, page);
  REQUIRE(second.size() == 2);
  CHECK(second[0].event_id == events[2].event_id);
  apikeys::AuditRange since = all_events();
  since.since = events[1].time;
  CHECK(store.audit_events(alice, since).size() == 2);

  // Pruning takes every account's older events, and only those, batch after batch (a
  // store on the same schema that deletes two at a time: batches of 2 and 1).
  apikeys::PostgresStoreOptions small = options_for(schema);
  small.audit_prune_batch = 2;
  apikeys::PostgresStore batched(*pg, small);
  CHECK(batched.prune_audit(events[1].time) == 3);
  CHECK(store.audit_events(alice, all_events()).size() == 2);
  const auto bobs_left = store.audit_events(bob, all_events());
  REQUIRE(bobs_left.size() == 1);
  CHECK(bobs_left[0].event_id == bobs[0].event_id);
  CHECK(store.prune_audit(events[1].time) == 0);
  CHECK(apikeys::PostgresStoreOptions{}.audit_prune_batch == 10'000);  // README.md's figure
  small.audit_prune_batch = 0;
  CHECK(error_code_of([&] { apikeys::PostgresStore s(*pg, small); }) ==
        ErrorCode::invalid_argument);
}

TEST_CASE("PostgresStore prunes the oldest events first, each batch its own transaction",
          "[servers][postgres][store][audit]") {
  const auto pg = apikeys_test::test_pg();
  if (!pg) return;
  SchemaJanitor janitor(*pg);
  const std::string schema = janitor.make();
  apikeys::PostgresStoreOptions o = options_for(schema);
  o.audit_prune_batch = 2;
  o.statement_timeout = milliseconds(500);
  apikeys::PostgresStore store(*pg, o);
  const apikeys::Uuid alice = apikeys_test::account_id(1);
  RecordingAudit audit;  // one event per write, 1 ms apart
  for (std::uint32_t n = 1; n <= 5; ++n) store.insert_audited(record(n, alice, n), audit);
  const auto events = store.audit_events(alice, all_events());  // newest first
  REQUIRE(events.size() == 5);

  // Another session locks the newest event: the batches of the two oldest and of the
  // next two are deleted and committed, the last one waits on the lock and times out.
  PGconn* locker = PQconnectdb(pg->c_str());
  REQUIRE(PQstatus(locker) == CONNECTION_OK);
  const auto run = [&](const std::string& sql) {
    PGresult* r = PQexec(locker, sql.c_str());
    const ExecStatusType status = PQresultStatus(r);
    PQclear(r);
    return status == PGRES_COMMAND_OK || status == PGRES_TUPLES_OK;
  };
  CHECK(run("BEGIN"));
  CHECK(run("SELECT 1 FROM \"" + schema + "\".apikeys_audit_events WHERE event_id = '" +
            events[0].event_id.to_string() + "' FOR UPDATE"));
  CHECK_THROWS_AS(store.prune_audit(apikeys::TimePoint::max()), apikeys::Error);
  const auto left = store.audit_events(alice, all_events());
  REQUIRE(left.size() == 1);
  CHECK(left[0].event_id == events[0].event_id);
  CHECK(run("ROLLBACK"));
  PQfinish(locker);
  CHECK(store.prune_audit(apikeys::TimePoint::max()) == 1);
}

namespace {

// A ChangeAudit that stops the server's backend, then throws: the write's ROLLBACK
// meets a server that does not answer.
class StallingAudit final : public apikeys::ChangeAudit {
 public:
  explicit StallingAudit(StoppableBackend& backend) : backend_(backend) {}

  std::optional<apikeys::AuditEvent> event(const apikeys::KeyInfo*,
                                           const apikeys::KeyInfo*) const override {
    stopped_ = backend_.stop();
    throw std::runtime_error("the audit failed");
  }

  [[nodiscard]] bool stopped() const { return stopped_; }

 private:
  StoppableBackend& backend_;
  mutable bool stopped_ = false;
};

}  // namespace

TEST_CASE("PostgresStore: a connection whose ROLLBACK timed out is not reused",
          "[servers][postgres][faults]") {
  const auto pg = apikeys_test::test_pg();
  if (!pg) return;
  SchemaJanitor janitor(*pg);
  const std::string app = apikeys_test::unique_name("apikeys_app");
  apikeys::PostgresStoreOptions o = options_for(janitor.make());
  o.statement_timeout = milliseconds(500);
  apikeys::PostgresStore store(*pg + " application_name=" + app, o);
  const apikeys::Uuid alice = apikeys_test::account_id(1);
  store.insert(record(1, alice));  // one pooled connection
  StoppableBackend backend(*pg, app);
  StallingAudit audit(backend);
  CHECK_THROWS_AS(store.insert_audited(record(2, alice), audit), std::runtime_error);
  if (!audit.stopped()) return;
  backend.resume();
  // The connection went back with its ROLLBACK unanswered. Pooled, it would fail the
  // next write ("another command is already in progress"), which is not retried.
  CHECK_NOTHROW(store.insert(record(3, alice)));
  CHECK_FALSE(store.find(record(2, alice).info.public_key));
  CHECK(store.find(record(3, alice).info.public_key));
}

TEST_CASE("PostgresStore: a ChangeAudit that throws leaves no change and no event",
          "[servers][postgres][store][audit]") {
  const auto pg = apikeys_test::test_pg();
  if (!pg) return;
  SchemaJanitor janitor(*pg);
  const std::string schema = janitor.make();
  apikeys::PostgresStore store(*pg, options_for(schema));
  const apikeys::Uuid alice = apikeys_test::account_id(1);
  using apikeys_test::contract::credits_of;
  using apikeys_test::contract::lineage_record;
  // Credits with a daily refill, refilled the day of at(0): due two days later.
  apikeys::CreditRefill refill;
  refill.amount = 10;
  const apikeys::TimePoint later = apikeys_test::contract::at(0) + std::chrono::hours(48);
  const apikeys::KeyRecord kept = lineage_record(
      1, alice,
      credits_of(5, refill,
                 apikeys::refill_period(refill.interval, apikeys_test::contract::at(0))));
  store.insert(kept);
  store.insert(record(2, alice, 2));
  store.insert(record(3, alice, 3));
  const std::uint64_t revision = store.revision();
  const auto keys_before = store.list(alice);

  SECTION("insert") {
    RecordingAudit audit(0);
    CHECK_THROWS_AS(store.insert_audited(record(4, alice), audit), std::runtime_error);
    CHECK_FALSE(store.find(record(4, alice).info.public_key));
  }
  SECTION("replace") {
    RecordingAudit audit(0);
    apikeys::KeyInfo next = *store.get(alice, kept.info.key_id);
    next.title = "renamed";
    CHECK_THROWS_AS(store.replace_audited(alice, next, next.version, audit), std::runtime_error);
  }
  SECTION("rotate, when the successor's event throws") {
    RecordingAudit audit(1);
    apikeys::KeyInfo old_next = *store.get(alice, kept.info.key_id);
    apikeys::KeyRecord successor = record(5, alice, 5);
    successor.info.lineage_id = kept.info.key_id;
    successor.info.rotated_from = kept.info.key_id;
    old_next.rotated_to = successor.info.key_id;
    CHECK_THROWS_AS(store.rotate_audited(alice, old_next, old_next.version, successor, audit),
                    std::runtime_error);
    CHECK(audit.calls().size() == 2);
    CHECK_FALSE(store.find(successor.info.public_key));
  }
  SECTION("remove") {
    RecordingAudit audit(0);
    CHECK_THROWS_AS(store.remove_audited(alice, kept.info.key_id, audit), std::runtime_error);
  }
  SECTION("revoke_all, when the second key's event throws") {
    RecordingAudit audit(1);
    CHECK_THROWS_AS(store.revoke_all_audited(alice, apikeys_test::contract::at(50), audit),
                    std::runtime_error);
    CHECK(audit.calls().size() == 2);
  }
  SECTION("change_credits") {
    RecordingAudit audit(0);
    apikeys::CreditsChange remove;
    remove.op = apikeys::CreditsOp::remove;
    CHECK_THROWS_AS(store.change_credits_audited(alice, kept.info.key_id, remove, audit),
                    std::runtime_error);
  }
  SECTION("replace_digests") {
    RecordingAudit audit(0);
    apikeys::DigestChange change;
    change.key_id = kept.info.key_id;
    change.from = kept.digest;
    change.to = apikeys_test::contract::digest(77, 2);
    CHECK_THROWS_AS(store.replace_digests_audited({change}, audit), std::runtime_error);
    const auto found = store.find(kept.info.public_key);
    REQUIRE(found);
    CHECK(found->digest.bytes == kept.digest.bytes);
    CHECK(found->digest.pepper_id == kept.digest.pepper_id);
  }
  SECTION("take_credits, when it writes a refill") {
    RecordingAudit audit(0);
    CHECK_THROWS_AS(store.take_credits_audited(kept.info.key_id, 1, 1, later, audit),
                    std::runtime_error);
    REQUIRE(audit.calls().size() == 1);
    // Neither the refill nor the take was written.
    const auto credits = store.get(alice, kept.info.key_id)->credits;
    REQUIRE(credits);
    CHECK(credits->remaining == 5);
    CHECK(credits->refilled_period == kept.info.credits->refilled_period);
  }
  // Nothing written: the keys, their credits, the revision and the trail as they were.
  const auto keys_after = store.list(alice);
  REQUIRE(keys_after.size() == keys_before.size());
  for (std::size_t i = 0; i < keys_after.size(); ++i) {
    apikeys_test::contract::check_same_key(keys_after[i], keys_before[i]);
    CHECK(keys_after[i].credits.has_value() == keys_before[i].credits.has_value());
  }
  CHECK(store.revision() == revision);
  CHECK(audit_rows(*pg, schema) == 0);
  // The connection went back to the pool usable: the next audited write commits.
  RecordingAudit ok;
  CHECK(store.revoke_all_audited(alice, apikeys_test::contract::at(60), ok).size() == 3);
  CHECK(audit_rows(*pg, schema) == 3);
}

TEST_CASE("PostgresStore audits each digest replace_digests_audited rewrites, and no other",
          "[servers][postgres][store][audit]") {
  const auto pg = apikeys_test::test_pg();
  if (!pg) return;
  SchemaJanitor janitor(*pg);
  const std::string schema = janitor.make();
  apikeys::PostgresStore store(*pg, options_for(schema));
  const apikeys::Uuid alice = apikeys_test::account_id(1);
  const apikeys::Uuid bob = apikeys_test::account_id(2);
  using apikeys_test::contract::credits_of;
  using apikeys_test::contract::digest;
  const apikeys::KeyRecord first = apikeys_test::contract::lineage_record(1, alice, credits_of(5));
  const apikeys::KeyRecord second = record(2, alice, 2);
  const apikeys::KeyRecord bobs = record(3, bob, 3);
  store.insert(first);
  store.insert(second);
  store.insert(bobs);
  const auto change = [](const apikeys::KeyRecord& r, apikeys::Digest from, std::uint32_t seed) {
    apikeys::DigestChange c;
    c.key_id = r.info.key_id;
    c.from = from;
    c.to = digest(seed, 2);
    return c;
  };
  const std::vector<apikeys::DigestChange> changes = {
      change(bobs, bobs.digest, 30),
      change(second, digest(99, 1), 20),  // stale: the key's digest is another
      change(first, first.digest, 10),
      change(first, first.digest, 11),  // the same key again: the first change wins
  };
  RecordingAudit audit;
  CHECK(store.replace_digests_audited(changes, audit) == 2);
  // One call per key rewritten, in batch order, before and after the key as it is.
  REQUIRE(audit.calls().size() == 2);
  const apikeys::KeyRecord* want[] = {&bobs, &first};
  for (std::size_t i = 0; i < 2; ++i) {
    const auto& call = audit.calls()[i];
    REQUIRE(call.before);
    REQUIRE(call.after);
    apikeys_test::contract::check_same_key(*call.before, want[i]->info);
    apikeys_test::contract::check_same_key(*call.after, want[i]->info);
  }
  REQUIRE(audit.calls()[1].after->credits);
  CHECK(audit.calls()[1].after->credits->remaining == 5);
  CHECK(store.find(first.info.public_key)->digest.bytes == digest(10, 2).bytes);
  CHECK(store.find(first.info.public_key)->digest.pepper_id == 2);
  CHECK(store.find(second.info.public_key)->digest.pepper_id == 1);
  // Each event stored with its key's account.
  const auto alices = store.audit_events(alice, all_events());
  REQUIRE(alices.size() == 1);
  CHECK(alices[0].key_id == first.info.key_id);
  CHECK(store.audit_events(bob, all_events()).size() == 1);
  // Nothing left to rewrite: no event.
  CHECK(store.replace_digests_audited(changes, audit) == 0);
  CHECK(store.replace_digests_audited({}, audit) == 0);
  CHECK(audit.calls().size() == 2);
  CHECK(audit_rows(*pg, schema) == 2);
}

TEST_CASE("PostgresStore audits a refill take_credits_audited writes, once per period",
          "[servers][postgres][store][audit][credits]") {
  const auto pg = apikeys_test::test_pg();
  if (!pg) return;
  SchemaJanitor janitor(*pg);
  const std::string schema = janitor.make();
  apikeys::PostgresStore store(*pg, options_for(schema));
  const apikeys::Uuid alice = apikeys_test::account_id(1);
  using apikeys::CreditTake;
  using apikeys_test::contract::at;
  using apikeys_test::contract::credits_of;
  using apikeys_test::contract::lineage_record;
  using std::chrono::hours;
  constexpr auto kDaily = apikeys::RefillInterval::daily;
  apikeys::CreditRefill refill;
  refill.amount = 10;  // a daily reset to 10
  const apikeys::TimePoint today = at(0);
  const apikeys::TimePoint tomorrow = today + hours(24);
  const apikeys::KeyRecord first =
      lineage_record(1, alice, credits_of(3, refill, apikeys::refill_period(kDaily, today)));
  store.insert(first);
  // The lineage's newest key, whose event a refill writes.
  apikeys::KeyRecord newest = record(2, alice, 500);
  newest.info.lineage_id = first.info.key_id;
  newest.info.rotated_from = first.info.key_id;
  store.insert(newest);
  const apikeys::KeyRecord no_refill = lineage_record(3, alice, credits_of(5));
  store.insert(no_refill);
  const apikeys::Uuid lineage = first.info.key_id;
  RecordingAudit audit;

  // No refill due: taken or refused as take_credits() does, and no event.
  CreditTake t = store.take_credits_audited(lineage, 1, 1, today, audit);
  CHECK(t.outcome == CreditTake::Outcome::taken);
  CHECK(t.remaining == 2);
  t = store.take_credits_audited(lineage, 5, 5, today, audit);
  CHECK(t.outcome == CreditTake::Outcome::insufficient);
  CHECK(t.remaining == 2);
  CHECK(t.period == apikeys::refill_period(kDaily, today));
  t = store.take_credits_audited(no_refill.info.key_id, 1, 1, tomorrow, audit);
  CHECK(t.outcome == CreditTake::Outcome::taken);
  CHECK(t.remaining == 4);
  t = store.take_credits_audited(apikeys_test::contract::key_id(99), 1, 1, tomorrow, audit);
  CHECK(t.outcome == CreditTake::Outcome::no_credits);
  CHECK(audit.calls().empty());

  // A new day: the refill is written with one event, the newest key's, then the take.
  t = store.take_credits_audited(lineage, 4, 4, tomorrow, audit);
  CHECK(t.outcome == CreditTake::Outcome::taken);
  CHECK(t.taken == 4);
  CHECK(t.remaining == 6);
  CHECK(t.period == apikeys::refill_period(kDaily, tomorrow));
  REQUIRE(audit.calls().size() == 1);
  const auto& call = audit.calls()[0];
  REQUIRE(call.before);
  REQUIRE(call.after);
  CHECK(call.before->key_id == newest.info.key_id);
  CHECK(call.after->key_id == newest.info.key_id);
  REQUIRE(call.before->credits);
  CHECK(call.before->credits->remaining == 2);
  CHECK(call.before->credits->refilled_period == apikeys::refill_period(kDaily, today));
  REQUIRE(call.after->credits);
  CHECK(call.after->credits->remaining == 10);
  CHECK(call.after->credits->refilled_period == apikeys::refill_period(kDaily, tomorrow));
  const auto events = store.audit_events(alice, all_events());
  REQUIRE(events.size() == 1);
  CHECK(events[0].key_id == newest.info.key_id);

  // The same day again, taken or refused: the refill is not written twice.
  t = store.take_credits_audited(lineage, 100, 100, tomorrow, audit);
  CHECK(t.outcome == CreditTake::Outcome::insufficient);
  CHECK(t.remaining == 6);
  t = store.take_credits_audited(lineage, 1, 1, tomorrow, audit);
  CHECK(t.remaining == 5);
  CHECK(audit.calls().size() == 1);

  // The day after, a take refused for want of credits still writes the refill, audited.
  const apikeys::TimePoint day_after = tomorrow + hours(24);
  t = store.take_credits_audited(lineage, 100, 100, day_after, audit);
  CHECK(t.outcome == CreditTake::Outcome::insufficient);
  CHECK(t.remaining == 10);
  CHECK(audit.calls().size() == 2);
  const auto credits = store.get(alice, lineage)->credits;
  REQUIRE(credits);
  CHECK(credits->remaining == 10);
  CHECK(credits->refilled_period == apikeys::refill_period(kDaily, day_after));
  CHECK(audit_rows(*pg, schema) == 2);

  // take_credits() applies a refill as before, and writes no event.
  CHECK(store.take_credits(lineage, 1, 1, day_after + hours(24)).remaining == 9);
  CHECK(audit_rows(*pg, schema) == 2);
}

TEST_CASE("PostgresStore migrates a version 4 schema: the audit trail and generations added",
          "[servers][postgres][store][migration][audit]") {
  const auto pg = apikeys_test::test_pg();
  if (!pg) return;
  SchemaJanitor janitor(*pg);
  const std::string schema = janitor.make();
  const std::string s = "\"" + schema + "\"";
  const apikeys::Uuid alice = apikeys_test::account_id(1);
  const apikeys::KeyRecord old_key =
      apikeys_test::contract::lineage_record(1, alice, apikeys_test::contract::credits_of(7));
  {
    apikeys::PostgresStore fresh(*pg, options_for(schema));
    fresh.insert(old_key);
  }
  // Back to the tables version 4 wrote.
  run_sql(*pg, "DROP TABLE " + s + ".apikeys_audit_events; ALTER TABLE " + s +
                   ".apikeys_key_credits DROP COLUMN generation; UPDATE " + s +
                   ".apikeys_schema_version SET version = 4 WHERE id = 1;");
  REQUIRE(run_sql(*pg, "SELECT to_regclass('" + s + ".apikeys_audit_events')::text") ==
          std::vector<std::vector<std::string>>{{"NULL"}});

  apikeys::PostgresStore store(*pg, options_for(schema));
  CHECK(apikeys::PostgresStore::schema_version() == 6);
  CHECK(run_sql(*pg, "SELECT version FROM " + s + ".apikeys_schema_version") ==
        std::vector<std::vector<std::string>>{{"6"}});
  // The credits row from before has the generation of a balance never set since.
  CHECK(run_sql(*pg, "SELECT generation FROM " + s + ".apikeys_key_credits") ==
        std::vector<std::vector<std::string>>{{"0"}});
  const auto indexes =
      run_sql(*pg, "SELECT indexdef FROM pg_indexes WHERE schemaname = '" + schema +
                       "' AND tablename = 'apikeys_audit_events'"
                       " ORDER BY indexname");
  std::vector<std::string> defs;
  for (const auto& row : indexes) defs.push_back(row[0]);
  const auto has = [&defs](const std::string& columns) {
    return std::any_of(defs.begin(), defs.end(),
                       [&](const std::string& d) { return d.find(columns) != std::string::npos; });
  };
  CHECK(has("(account_id, time_ms DESC, event_id DESC)"));
  CHECK(has("(account_id, key_id, time_ms DESC, event_id DESC)"));
  CHECK(has("(time_ms)"));
  CHECK(has("(event_id)"));  // the primary key

  const auto got = store.find(old_key.info.public_key);
  REQUIRE(got);
  apikeys_test::contract::check_same_record(*got, old_key);
  REQUIRE(got->info.credits);
  CHECK(got->info.credits->remaining == 7);
  // The old rows take audited writes, and their events read back.
  RecordingAudit audit;
  apikeys::KeyInfo next = got->info;
  next.title = "after the upgrade";
  REQUIRE(store.replace_audited(alice, next, next.version, audit).outcome ==
          apikeys::WriteOutcome::applied);
  const auto events = store.audit_events(alice, all_events());
  REQUIRE(events.size() == 1);
  CHECK(events[0].key_id == old_key.info.key_id);
  // A second open finds nothing left to migrate.
  apikeys::PostgresStore again(*pg, options_for(schema));
  CHECK(again.audit_events(alice, all_events()).size() == 1);
}

namespace {

std::string env_or_empty(const char* name) {
  const char* v = std::getenv(name);
  return v == nullptr ? std::string() : std::string(v);
}

std::int64_t wall_millis() {
  return std::chrono::duration_cast<milliseconds>(
             std::chrono::system_clock::now().time_since_epoch())
      .count();
}

constexpr int kRevokeRounds = 4;
constexpr std::uint32_t kRevokeKeys = 60;
constexpr std::int64_t kRoundMillis = 400;

// Account `round` of the two-process revoke test.
apikeys::Uuid revoke_account(int round) {
  return apikeys_test::account_id(static_cast<std::uint8_t>(100 + round));
}

// Runs this program's hidden case "PostgresStore audit child" with `env` added.
pid_t spawn_audit_child(const std::vector<std::string>& env) {
  std::vector<std::string> vars = env;
  for (char** e = environ; *e != nullptr; ++e) vars.emplace_back(*e);
  std::vector<char*> envp;
  for (std::string& v : vars) envp.push_back(v.data());
  envp.push_back(nullptr);
  std::string self = "/proc/self/exe";
  std::string name = "PostgresStore audit child";
  std::vector<char*> argv = {self.data(), name.data(), nullptr};
  pid_t pid = 0;
  REQUIRE(posix_spawn(&pid, self.c_str(), nullptr, nullptr, argv.data(), envp.data()) == 0);
  return pid;
}

}  // namespace

// The other processes of the test below: in schema APIKEYS_PG_AUDIT_SCHEMA, revokes
// revoke_account(r) at wall-clock millisecond START + r * kRoundMillis, for each round
// r; writes to OUT one line per round: how many keys it revoked, and 1 when each event
// it was asked for had an unrevoked before and a revoked after (else 0).
TEST_CASE("PostgresStore audit child", "[.]") {
  const auto pg = apikeys_test::test_pg();
  REQUIRE(pg);
  const std::int64_t start = std::atoll(env_or_empty("APIKEYS_PG_AUDIT_START").c_str());
  apikeys::PostgresStore store(*pg, options_for(env_or_empty("APIKEYS_PG_AUDIT_SCHEMA")));
  (void)store.revision();  // connected, statements prepared, before the start line
  std::ofstream out(env_or_empty("APIKEYS_PG_AUDIT_OUT"));
  for (int round = 0; round < kRevokeRounds; ++round) {
    while (wall_millis() < start + round * kRoundMillis) {
      std::this_thread::sleep_for(milliseconds(1));
    }
    RecordingAudit audit;
    const auto revoked =
        store.revoke_all_audited(revoke_account(round), apikeys_test::contract::at(90), audit);
    bool sound = audit.calls().size() == revoked.size();
    for (const auto& call : audit.calls()) {
      sound = sound && call.before && call.before->status != apikeys::KeyStatus::revoked &&
              call.after && call.after->status == apikeys::KeyStatus::revoked &&
              call.after->version == call.before->version + 1;
    }
    out << revoked.size() << " " << (sound ? 1 : 0) << "\n";
  }
}

TEST_CASE("PostgresStore: two processes' concurrent audited revoke_all give one event per key",
          "[servers][postgres][store][audit]") {
  const auto pg = apikeys_test::test_pg();
  if (!pg) return;
  SchemaJanitor janitor(*pg);
  const std::string schema = janitor.make();
  apikeys::PostgresStore store(*pg, options_for(schema));
  for (int round = 0; round < kRevokeRounds; ++round) {
    for (std::uint32_t i = 0; i < kRevokeKeys; ++i) {
      const std::uint32_t n = 1000 * static_cast<std::uint32_t>(round + 1) + i;
      store.insert(record(n, revoke_account(round), static_cast<std::int64_t>(i)));
    }
  }
  const std::int64_t start = wall_millis() + 1500;
  std::vector<pid_t> pids;
  std::vector<std::string> outs;
  for (int i = 0; i < 2; ++i) {
    outs.push_back("/tmp/" + apikeys_test::unique_name("pgaudit") + ".out");
    pids.push_back(spawn_audit_child({"APIKEYS_PG_AUDIT_SCHEMA=" + schema,
                                      "APIKEYS_PG_AUDIT_START=" + std::to_string(start),
                                      "APIKEYS_PG_AUDIT_OUT=" + outs.back()}));
  }
  std::vector<std::vector<std::uint64_t>> revoked(2);
  for (std::size_t i = 0; i < 2; ++i) {
    int status = 0;
    REQUIRE(::waitpid(pids[i], &status, 0) == pids[i]);
    REQUIRE(WIFEXITED(status));
    REQUIRE(WEXITSTATUS(status) == 0);
    std::ifstream in(outs[i]);
    for (int round = 0; round < kRevokeRounds; ++round) {
      std::uint64_t n = 0;
      int sound = 0;
      REQUIRE(static_cast<bool>(in >> n >> sound));
      CHECK(sound == 1);
      revoked[i].push_back(n);
    }
    std::filesystem::remove(outs[i]);
  }
  for (int round = 0; round < kRevokeRounds; ++round) {
    INFO("round " << round);
    const auto r = static_cast<std::size_t>(round);
    // Between them every key was revoked once, with one event each.
    CHECK(revoked[0][r] + revoked[1][r] == kRevokeKeys);
    const auto events = store.audit_events(revoke_account(round), all_events());
    CHECK(events.size() == kRevokeKeys);
    std::vector<apikeys::Uuid> keys;
    for (const auto& e : events) keys.push_back(e.key_id);
    std::sort(keys.begin(), keys.end());
    CHECK(std::adjacent_find(keys.begin(), keys.end()) == keys.end());
    for (const auto& k : store.list(revoke_account(round))) {
      CHECK(k.status == apikeys::KeyStatus::revoked);
    }
  }
}
