// SqliteStore beyond the Store contract: persistence, schema migration (the 0.1
// release's database included) and refusal, cross-instance revision, read-only use, error
// translation, several instances on one file, and the policy operations (pages and their
// query plans, replace, rotate, revoke_all). Raw sqlite3 builds the databases the
// library must cope with.
#include <sqlite3.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include <nlohmann/json.hpp>

#include "apikeys/apikeys.hpp"
#include "apikeys/error.hpp"
#include "apikeys/sqlite_store.hpp"
#include "catch.hpp"
#include "foreign_files.hpp"
#include "record_fields.hpp"
#include "sqlite/queries.hpp"
#include "store_contract.hpp"
#include "test_support.hpp"

namespace {

namespace fs = std::filesystem;
using apikeys::ErrorCode;
using apikeys::KeyStatus;
using apikeys::SqliteStore;
using apikeys::SqliteStoreOptions;
using apikeys_test::account_id;
using apikeys_test::file_bytes;
using apikeys_test::TempDir;
using apikeys_test::contract::at;
using apikeys_test::contract::check_same_record;
using apikeys_test::contract::error_code_of;
using apikeys_test::contract::key_id;
using apikeys_test::contract::public_key;
using apikeys_test::contract::record;

// Schema version 1 exactly as released: a database written by that version must keep
// opening (and migrating) forever. Do not edit.
constexpr const char* kSchemaV1 = R"sql(
CREATE TABLE api_keys (
  key_id       TEXT    NOT NULL PRIMARY KEY,
  account_id   TEXT    NOT NULL,
  public_key   TEXT    NOT NULL,
  digest       BLOB    NOT NULL,
  pepper_id    INTEGER NOT NULL,
  title        TEXT    NOT NULL,
  description  TEXT    NOT NULL,
  status       INTEGER NOT NULL,
  created_at   INTEGER NOT NULL,
  expires_at   INTEGER,
  last_used_at INTEGER
);
CREATE UNIQUE INDEX api_keys_public_key ON api_keys (public_key);
CREATE INDEX api_keys_account_created ON api_keys (account_id, created_at);
PRAGMA user_version = 1;
)sql";

// Schema version 2 exactly as released (the step after kSchemaV1). Do not edit.
constexpr const char* kSchemaV2 = R"sql(
CREATE TABLE apikeys_meta (
  id       INTEGER NOT NULL PRIMARY KEY CHECK (id = 1),
  revision INTEGER NOT NULL
);
INSERT INTO apikeys_meta (id, revision) VALUES (1, 0);
PRAGMA user_version = 2;
)sql";

// A plain sqlite3 connection, standing in for an old library version or another tool.
class RawDb {
 public:
  explicit RawDb(const std::string& path) {
    const int rc =
        sqlite3_open_v2(path.c_str(), &db_, SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE, nullptr);
    REQUIRE(rc == SQLITE_OK);
  }
  ~RawDb() { sqlite3_close(db_); }
  RawDb(const RawDb&) = delete;
  RawDb& operator=(const RawDb&) = delete;

  void exec(const std::string& sql) {
    char* err = nullptr;
    const int rc = sqlite3_exec(db_, sql.c_str(), nullptr, nullptr, &err);
    const std::string message = err != nullptr ? err : "";
    sqlite3_free(err);
    CHECK(message == "");  // Shows SQLite's message when the statement failed.
    REQUIRE(rc == SQLITE_OK);
  }

  std::int64_t integer(const std::string& sql) {
    sqlite3_stmt* stmt = prepare(sql);
    const int rc = sqlite3_step(stmt);
    const std::int64_t value = rc == SQLITE_ROW ? sqlite3_column_int64(stmt, 0) : -1;
    sqlite3_finalize(stmt);
    REQUIRE(rc == SQLITE_ROW);
    return value;
  }

  // Runs `sql` (binding `param` to ?1) to its end and returns the rows its full table
  // scans stepped over, its triggers' included.
  std::int64_t fullscan_steps(const std::string& sql, const std::string& param) {
    sqlite3_stmt* stmt = prepare(sql);
    sqlite3_bind_text(stmt, 1, param.data(), static_cast<int>(param.size()), SQLITE_TRANSIENT);
    const int rc = sqlite3_step(stmt);
    const int steps = sqlite3_stmt_status(stmt, SQLITE_STMTSTATUS_FULLSCAN_STEP, 0);
    sqlite3_finalize(stmt);
    REQUIRE(rc == SQLITE_DONE);
    return steps;
  }

  // Column `column` of every row, joined by " | ".
  std::string rows(const std::string& sql, int column) {
    sqlite3_stmt* stmt = prepare(sql);
    std::string out;
    int rc = SQLITE_ROW;
    while ((rc = sqlite3_step(stmt)) == SQLITE_ROW) {
      if (!out.empty()) out += " | ";
      out.append(reinterpret_cast<const char*>(sqlite3_column_text(stmt, column)),
                 static_cast<std::size_t>(sqlite3_column_bytes(stmt, column)));
    }
    sqlite3_finalize(stmt);
    REQUIRE(rc == SQLITE_DONE);
    return out;
  }

  std::string text(const std::string& sql) {
    sqlite3_stmt* stmt = prepare(sql);
    const int rc = sqlite3_step(stmt);
    std::string value;
    if (rc == SQLITE_ROW) {
      value.assign(reinterpret_cast<const char*>(sqlite3_column_text(stmt, 0)),
                   static_cast<std::size_t>(sqlite3_column_bytes(stmt, 0)));
    }
    sqlite3_finalize(stmt);
    REQUIRE(rc == SQLITE_ROW);
    return value;
  }

 private:
  sqlite3_stmt* prepare(const std::string& sql) {
    sqlite3_stmt* stmt = nullptr;
    REQUIRE(sqlite3_prepare_v2(db_, sql.c_str(), -1, &stmt, nullptr) == SQLITE_OK);
    return stmt;
  }

  sqlite3* db_ = nullptr;
};

SqliteStoreOptions fast_options() {
  SqliteStoreOptions o;
  o.durable = false;
  return o;
}

// The apikeys::Error `f` throws; nullopt when it throws nothing.
template <typename F>
std::optional<apikeys::Error> error_of(F&& f) {
  try {
    f();
  } catch (const apikeys::Error& e) {
    return e;
  }
  return std::nullopt;
}

bool contains(const std::string& text, const std::string& part) {
  return text.find(part) != std::string::npos;
}

// Makes `dir` the working directory while alive, then puts the old one back.
class InDirectory {
 public:
  explicit InDirectory(const std::filesystem::path& dir)
      : before_(std::filesystem::current_path()) {
    std::filesystem::current_path(dir);
  }
  ~InDirectory() {
    std::error_code ec;
    std::filesystem::current_path(before_, ec);
  }
  InDirectory(const InDirectory&) = delete;
  InDirectory& operator=(const InDirectory&) = delete;
  void move_to(const std::filesystem::path& dir) const { std::filesystem::current_path(dir); }

 private:
  std::filesystem::path before_;
};

}  // namespace

TEST_CASE("SqliteStore keeps its data across reopen", "[store][sqlite]") {
  TempDir dir;
  const std::string path = dir.file("keys.db");
  const apikeys::Uuid alice = account_id(1);
  apikeys::KeyRecord a = record(1, alice, 100);
  a.info.expires_at = at(9'000'000);
  a.info.description = "kept";
  const apikeys::KeyRecord b = record(2, alice, 200);
  std::uint64_t revision = 0;
  {
    SqliteStore store(path);
    store.insert(a);
    store.insert(b);
    REQUIRE(store.set_status(alice, b.info.key_id, KeyStatus::revoked));
    store.record_last_use({{a.info.key_id, at(5000)}});
    revision = store.revision();
    CHECK(revision == 1);
  }
  SqliteStore store(path);
  a.info.last_used_at = at(5000);
  check_same_record(*store.find(a.info.public_key), a);
  CHECK(store.find(b.info.public_key)->info.status == KeyStatus::revoked);
  CHECK(apikeys_test::contract::ids_of(store.list(alice)) ==
        std::vector<apikeys::Uuid>{b.info.key_id, a.info.key_id});
  CHECK(store.revision() == revision);
  CHECK(SqliteStore::schema_version() == 8);
  CHECK(RawDb(path).text("PRAGMA journal_mode") == "wal");
  CHECK(RawDb(path).integer("PRAGMA application_id") == SqliteStore::application_id());
  CHECK(SqliteStore::application_id() == 0x6170696B);  // "apik": never changes
}

TEST_CASE("SqliteStore's api_keys table has the fields of the record description, in order",
          "[store][sqlite]") {
  TempDir dir;
  const std::string path = dir.file("fields.db");
  { SqliteStore store(path, fast_options()); }
  RawDb raw(path);
  // The record's fields, then the admission columns (src/sqlite/admission.hpp), then
  // the credits flag the triggers keep (doc/sqlite-store.md, rule 38).
  const auto fields = static_cast<std::int64_t>(apikeys::detail::kFieldCount);
  CHECK(raw.integer("SELECT count(*) FROM pragma_table_info('api_keys')") == fields + 3);
  CHECK(raw.text("SELECT name || ' ' || type || ' ' || \"notnull\" FROM pragma_table_info("
                 "'api_keys') WHERE cid = " +
                 std::to_string(fields)) == "lineage_id TEXT 0");
  CHECK(raw.text("SELECT name || ' ' || type || ' ' || \"notnull\" FROM pragma_table_info("
                 "'api_keys') WHERE cid = " +
                 std::to_string(fields + 1)) == "rate_limits TEXT 1");
  CHECK(raw.text("SELECT name || ' ' || type || ' ' || \"notnull\" FROM pragma_table_info("
                 "'api_keys') WHERE cid = " +
                 std::to_string(fields + 2)) == "has_credits INTEGER 1");
  for (std::size_t i = 0; i < apikeys::detail::kFieldCount; ++i) {
    const apikeys::detail::RecordField& f = apikeys::detail::kRecordFields[i];
    const std::string where =
        " FROM pragma_table_info('api_keys') WHERE cid = " + std::to_string(i);
    INFO("column " << i << ", described as " << f.name);
    CHECK(raw.text("SELECT name" + where) == f.name);
    CHECK(raw.text("SELECT type" + where) == f.sqlite_type);
    CHECK(raw.integer("SELECT \"notnull\"" + where) == (f.nullable() ? 0 : 1));
  }
}

TEST_CASE("SqliteStore migrates a version 1 database and keeps its rows", "[store][sqlite]") {
  TempDir dir;
  const std::string path = dir.file("v1.db");
  {
    RawDb raw(path);
    raw.exec(kSchemaV1);
    raw.exec(
        "INSERT INTO api_keys VALUES ('00000001-0000-4000-8000-0000000000a5',"
        " '00000000-0000-4000-8000-000000000001', 'pk_old_key_0000000000000000000001',"
        " X'" +
        std::string(64, 'a') +
        "', 7, 'old title', 'old description', 1,"
        " 1735689600000, NULL, 1735689700000)");
  }
  {
    SqliteStore store(path);
    const auto got = store.find("pk_old_key_0000000000000000000001");
    REQUIRE(got);
    CHECK(got->info.key_id == key_id(1));
    CHECK(got->info.account_id == account_id(1));
    CHECK(got->info.title == "old title");
    CHECK(got->info.description == "old description");
    CHECK(got->info.status == KeyStatus::revoked);
    CHECK(got->info.created_at == at(0));
    CHECK_FALSE(got->info.expires_at);
    CHECK(got->info.last_used_at == at(100'000));
    CHECK(got->digest.bytes[0] == 0xaa);
    CHECK(got->digest.bytes[31] == 0xaa);
    CHECK(got->digest.pepper_id == 7);

    CHECK(store.revision() == 0);
    REQUIRE(store.set_status(account_id(1), key_id(1), KeyStatus::active));
    CHECK(store.revision() == 1);
    store.insert(record(2, account_id(1)));
  }
  RawDb raw(path);
  CHECK(raw.integer("PRAGMA user_version") == SqliteStore::schema_version());
  CHECK(raw.integer("PRAGMA application_id") == SqliteStore::application_id());
  CHECK(raw.integer("SELECT count(*) FROM apikeys_meta") == 1);
  CHECK(raw.integer("SELECT count(*) FROM api_keys") == 2);
}

TEST_CASE("SqliteStore opens a version 2 database of a release without the marker, and marks it",
          "[store][sqlite]") {
  // What the releases before the marker left: WAL mode, application_id 0, closed cleanly.
  TempDir dir;
  const std::string path = dir.file("v2.db");
  {
    RawDb raw(path);
    raw.exec("PRAGMA journal_mode = WAL");
    raw.exec(kSchemaV1);
    raw.exec(kSchemaV2);
    raw.exec(
        "INSERT INTO api_keys VALUES ('00000001-0000-4000-8000-0000000000a5',"
        " '00000000-0000-4000-8000-000000000001', 'pk_old_key_0000000000000000000001',"
        " X'" +
        std::string(64, 'b') + "', 1, 'old', '', 0, 1735689600000, NULL, NULL)");
    REQUIRE(raw.integer("PRAGMA application_id") == 0);
  }
  const std::string before = file_bytes(path);

  // Read-only: recognised as ours but too old to read (the change log is missing), so
  // refused with that reason, and neither migrated nor marked (those would be writes).
  SqliteStoreOptions read_only;
  read_only.read_only = true;
  const auto e = error_of([&] { SqliteStore store(path, read_only); });
  REQUIRE(e);
  CHECK(contains(e->what(), "schema version 2 is older than this library's"));
  CHECK(file_bytes(path) == before);

  {
    SqliteStore store(path);
    const auto got = store.find("pk_old_key_0000000000000000000001");
    REQUIRE(got);
    CHECK(got->info.title == "old");
    CHECK(got->digest.bytes[0] == 0xbb);
  }
  RawDb raw(path);
  CHECK(raw.integer("PRAGMA application_id") == SqliteStore::application_id());
  CHECK(raw.integer("PRAGMA user_version") == SqliteStore::schema_version());
  CHECK(raw.integer("SELECT count(*) FROM api_keys") == 1);
}

// SQLite (built with SQLITE_USE_URI, as Debian's is) reads a name starting with "file:"
// as a URI: "?vfs=unix-none" would open without locks, so two processes could write at
// once; "?mode=memory" would give each connection a private, empty database. A store's
// path is a file name, whatever it starts with.
TEST_CASE("SqliteStore opens a name starting with file: as that file, never as a URI",
          "[store][sqlite]") {
  TempDir dir;
  const InDirectory in(dir.path());
  for (const std::string name : {"file:keys.db?vfs=unix-none", "file:keys.db?mode=memory"}) {
    INFO(name);
    const apikeys::KeyRecord a = record(1, account_id(1), 100);
    {
      SqliteStore store(name);
      store.insert(a);
      // Another connection (a reader of the pool) sees the writer's row.
      REQUIRE(store.find(a.info.public_key));
    }
    // The file of that very name holds it, and so does a store reopened on it.
    CHECK(std::filesystem::is_regular_file(dir.file(name)));
    CHECK(RawDb(dir.file(name)).integer("SELECT count(*) FROM api_keys") == 1);
    CHECK(SqliteStore(name).find(a.info.public_key));
    CHECK_FALSE(std::filesystem::exists(dir.file("keys.db")));
  }
}

// A daemon may change its working directory after opening its store (to "/", say).
// Connections opened later, a reader for a new thread or the writer, must open the
// same file, not one of that name in the new directory.
TEST_CASE("SqliteStore opened by a relative name keeps its file when the directory changes",
          "[store][sqlite]") {
  TempDir first;
  TempDir second;
  InDirectory in(first.path());
  SqliteStore store("keys.db");
  const apikeys::KeyRecord a = record(1, account_id(1), 100);
  in.move_to(second.path());
  store.insert(a);
  REQUIRE(store.find(a.info.public_key));
  // Threads of their own: each takes a reader, most of them new connections.
  std::atomic<int> found{0};
  std::atomic<int> failed{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < 6; ++t) {
    threads.emplace_back([&] {
      try {
        if (store.find(a.info.public_key)) ++found;
      } catch (...) {
        ++failed;
      }
    });
  }
  for (auto& t : threads) t.join();
  CHECK(failed.load() == 0);
  CHECK(found.load() == 6);
  CHECK_FALSE(std::filesystem::exists(second.file("keys.db")));
  CHECK(RawDb(first.file("keys.db")).integer("SELECT count(*) FROM api_keys") == 1);
}

TEST_CASE("SqliteStore's open errors show a file name's unprintable bytes escaped",
          "[store][sqlite]") {
  // A name holding an escape sequence, a newline, a byte that is not ASCII and a
  // backslash: printed raw, it could rewrite a terminal or forge a line of a log.
  TempDir dir;
  const std::string name = std::string("x\x1b[31m\nforged line\xff\\.db");
  const std::string shown = "x\\x1b[31m\\x0aforged line\\xff\\x5c.db";
  const auto check = [&](const std::optional<apikeys::Error>& e, const char* why) {
    REQUIRE(e);
    INFO(e->what());
    CHECK(e->code() == ErrorCode::storage);
    CHECK(contains(e->what(), why));
    CHECK(contains(e->what(), shown));
    const std::string what = e->what();
    CHECK(std::none_of(what.begin(), what.end(), [](char c) {
      const auto b = static_cast<unsigned char>(c);
      return b < 0x20 || b >= 0x7F;
    }));
  };
  SqliteStoreOptions read_only;
  read_only.read_only = true;
  // Missing, on a read-only open (SqliteStore's own message).
  check(error_of([&] { SqliteStore store(dir.file(name), read_only); }), "no such file");
  // In a directory that does not exist (SQLite's message, behind the operation's name).
  check(error_of([&] { SqliteStore store(dir.file("missing-dir/" + name)); }), "open '");
  // Not an SQLite file (the schema check's message).
  {
    std::ofstream out(dir.file(name), std::ios::binary);
    out << std::string(4096, 'j');
  }
  check(error_of([&] { SqliteStore store(dir.file(name)); }), "not an apikeys database");
}

TEST_CASE("SqliteStore refuses a file that is not an apikeys database and leaves it unchanged",
          "[store][sqlite]") {
  TempDir dir;
  std::vector<apikeys_test::ForeignFile> files = apikeys_test::make_foreign_files(dir);
  {
    // An earlier release's schema is recognised exactly: with a table of someone else's
    // it is not ours.
    const std::string path = dir.file("v1-and-theirs.db");
    RawDb raw(path);
    raw.exec(kSchemaV1);
    raw.exec("CREATE TABLE theirs (id INTEGER PRIMARY KEY)");
    files.push_back({"an earlier apikeys schema with a table of someone else's", path});
  }
  {
    // The marker decides: another application's application_id on apikeys' tables.
    const std::string path = dir.file("marked-by-another.db");
    RawDb raw(path);
    raw.exec(kSchemaV1);
    raw.exec(kSchemaV2);
    raw.exec("PRAGMA application_id = 1179598413");  // someone else's number
    files.push_back({"apikeys' tables under another application_id", path});
  }

  SqliteStoreOptions read_only;
  read_only.read_only = true;
  for (const auto& file : files) {
    INFO(file.what);
    const std::string before = file_bytes(file.path);
    REQUIRE_FALSE(before.empty());
    for (const SqliteStoreOptions& options : {SqliteStoreOptions{}, read_only}) {
      const auto e = error_of([&] { SqliteStore store(file.path, options); });
      REQUIRE(e);
      CHECK(e->code() == ErrorCode::storage);
      CHECK(contains(e->what(), "not an apikeys database"));
    }
    CHECK(file_bytes(file.path) == before);
    // Nothing created beside it either (no WAL switch, no journal, no shared memory).
    CHECK_FALSE(fs::exists(file.path + "-wal"));
    CHECK_FALSE(fs::exists(file.path + "-shm"));
    CHECK_FALSE(fs::exists(file.path + "-journal"));
  }
}

TEST_CASE("SqliteStore initialises a missing or empty file only when asked to", "[store][sqlite]") {
  TempDir dir;
  SqliteStoreOptions no_create;
  no_create.create_if_missing = false;
  SqliteStoreOptions read_only;
  read_only.read_only = true;                     // never creates, whatever create_if_missing says
  CHECK(SqliteStoreOptions{}.create_if_missing);  // the default keeps creating

  SECTION("a missing file") {
    const std::string path = dir.file("missing.db");
    for (const SqliteStoreOptions& options : {no_create, read_only}) {
      CHECK(error_code_of([&] { SqliteStore store(path, options); }) == ErrorCode::storage);
      CHECK_FALSE(fs::exists(path));
    }
    { SqliteStore store(path); }
    CHECK(RawDb(path).integer("PRAGMA application_id") == SqliteStore::application_id());
  }

  SECTION("an empty file") {
    const std::string path = dir.file("empty.db");
    apikeys_test::make_empty_file(path);
    for (const SqliteStoreOptions& options : {no_create, read_only}) {
      const auto e = error_of([&] { SqliteStore store(path, options); });
      REQUIRE(e);
      CHECK(e->code() == ErrorCode::storage);
      CHECK(contains(e->what(), "not an apikeys database"));
      CHECK(fs::file_size(path) == 0);
      CHECK_FALSE(fs::exists(path + "-wal"));
      CHECK_FALSE(fs::exists(path + "-shm"));
      CHECK_FALSE(fs::exists(path + "-journal"));
    }
    {
      SqliteStore store(path);
      store.insert(record(1, account_id(1)));
    }
    CHECK(RawDb(path).integer("PRAGMA application_id") == SqliteStore::application_id());
    // Once initialised it is an apikeys database: create_if_missing no longer matters.
    CHECK(SqliteStore(path, no_create).find(public_key(1)));
  }
}

TEST_CASE("SqliteStore leaves another application's interrupted transaction alone",
          "[store][sqlite]") {
  // A hot journal: the file and its rollback journal as a crash mid-transaction leaves
  // them (copied while a transaction that spilled to the file is open). Rolling it back
  // would be a write; that is the owner's to make.
  TempDir dir;
  const std::string live = dir.file("live.db");
  const std::string path = dir.file("crashed.db");
  {
    RawDb raw(live);
    raw.exec("CREATE TABLE t (x BLOB); PRAGMA user_version = 5; PRAGMA cache_size = 10;");
    raw.exec("BEGIN");
    raw.exec(
        "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 2000)"
        " INSERT INTO t SELECT randomblob(500) FROM n");
    fs::copy_file(live, path);
    fs::copy_file(live + "-journal", path + "-journal");
    raw.exec("ROLLBACK");
  }
  const std::string before = file_bytes(path);
  const std::string journal_before = file_bytes(path + "-journal");
  REQUIRE_FALSE(journal_before.empty());

  SqliteStoreOptions read_only;
  read_only.read_only = true;
  for (const SqliteStoreOptions& options : {SqliteStoreOptions{}, read_only}) {
    const auto e = error_of([&] { SqliteStore store(path, options); });
    REQUIRE(e);
    CHECK(e->code() == ErrorCode::storage);
    CHECK(contains(e->what(), "hot journal"));
  }
  CHECK(file_bytes(path) == before);
  CHECK(file_bytes(path + "-journal") == journal_before);
}

TEST_CASE("SqliteStores opened at once on a new file all open it", "[store][sqlite]") {
  // Each one may find the file missing, empty, half-initialised or done; every one must
  // end up with the same apikeys database.
  TempDir dir;
  const std::string path = dir.file("race.db");
  constexpr int kThreads = 6;
  std::atomic<int> ready{0};
  std::mutex mu;
  std::string errors;  // guarded by mu
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      ready.fetch_add(1);
      while (ready.load() < kThreads) std::this_thread::yield();
      try {
        SqliteStore store(path, fast_options());
        store.insert(record(static_cast<std::uint32_t>(t + 1), account_id(1)));
      } catch (const std::exception& e) {
        std::lock_guard lock(mu);
        errors += std::string(e.what()) + "\n";
      }
    });
  }
  for (auto& th : threads) th.join();
  CHECK(errors == "");
  RawDb raw(path);
  CHECK(raw.integer("PRAGMA application_id") == SqliteStore::application_id());
  CHECK(raw.integer("SELECT count(*) FROM api_keys") == kThreads);
}

TEST_CASE(
    "SqliteStore refuses another application's WAL database while that application has it open",
    "[store][sqlite]") {
  TempDir dir;
  const std::string path = dir.file("in-use.db");
  RawDb owner(path);
  owner.exec("PRAGMA journal_mode = WAL");
  owner.exec("CREATE TABLE notes (id INTEGER PRIMARY KEY, body TEXT)");
  owner.exec("INSERT INTO notes (body) VALUES ('mine')");
  owner.exec("PRAGMA user_version = 3");
  REQUIRE(fs::exists(path + "-wal"));  // its last commits are in the WAL, not the file
  const std::string file_before = file_bytes(path);
  const std::string wal_before = file_bytes(path + "-wal");

  const auto e = error_of([&] { SqliteStore store(path); });
  REQUIRE(e);
  CHECK(e->code() == ErrorCode::storage);
  CHECK(contains(e->what(), "not an apikeys database"));
  CHECK(file_bytes(path) == file_before);
  CHECK(file_bytes(path + "-wal") == wal_before);
  CHECK(owner.integer("PRAGMA user_version") == 3);
  CHECK(owner.integer("SELECT count(*) FROM sqlite_master WHERE name LIKE 'api%'") == 0);
}

TEST_CASE("SqliteStore creates nothing beside another application's WAL files copied without -shm",
          "[store][sqlite]") {
  TempDir dir;
  const std::string original = dir.file("theirs.db");
  const std::string path = dir.file("copied.db");
  {
    RawDb owner(original);
    owner.exec("PRAGMA journal_mode = WAL");
    owner.exec("CREATE TABLE notes (id INTEGER PRIMARY KEY, body TEXT)");
    owner.exec("INSERT INTO notes (body) VALUES ('mine')");
    REQUIRE(fs::exists(original + "-wal"));
    // A copy of the database and its WAL, as a backup tool might take, without -shm.
    fs::copy_file(original, path);
    fs::copy_file(original + "-wal", path + "-wal");
  }
  REQUIRE_FALSE(fs::exists(path + "-shm"));
  const std::string file_before = file_bytes(path);
  const std::string wal_before = file_bytes(path + "-wal");
  for (const bool read_only : {false, true}) {
    SqliteStoreOptions o;
    o.read_only = read_only;
    const auto e = error_of([&] { SqliteStore store(path, o); });
    REQUIRE(e);
    CHECK(contains(e->what(), "not an apikeys database"));
    CHECK(file_bytes(path) == file_before);
    CHECK(file_bytes(path + "-wal") == wal_before);
    CHECK_FALSE(fs::exists(path + "-shm"));
  }
}

TEST_CASE("SqliteStore refuses databases it cannot use", "[store][sqlite]") {
  TempDir dir;

  SECTION("a newer schema version") {
    const std::string path = dir.file("newer.db");
    { SqliteStore store(path); }
    const int current = SqliteStore::schema_version();
    { RawDb(path).exec("PRAGMA user_version = " + std::to_string(current + 1)); }
    const auto e = error_of([&] { SqliteStore store(path); });
    REQUIRE(e);
    CHECK(e->code() == ErrorCode::storage);
    CHECK(contains(e->what(), "schema version " + std::to_string(current + 1) +
                                  " is newer than this library supports (" +
                                  std::to_string(current) + ")"));

    SqliteStoreOptions read_only;
    read_only.read_only = true;
    CHECK(error_code_of([&] { SqliteStore store(path, read_only); }) == ErrorCode::storage);
  }

  SECTION("a file that is not a database") {
    const std::string path = dir.file("text.db");
    {
      std::ofstream out(path);
      for (int i = 0; i < 100; ++i) out << "this is not an SQLite database, only text\n";
    }
    CHECK(error_code_of([&] { SqliteStore store(path); }) == ErrorCode::storage);
    SqliteStoreOptions read_only;
    read_only.read_only = true;
    CHECK(error_code_of([&] { SqliteStore store(path, read_only); }) == ErrorCode::storage);
  }

  SECTION("someone else's SQLite database") {
    const std::string path = dir.file("other.db");
    { RawDb(path).exec("CREATE TABLE users (id INTEGER PRIMARY KEY)"); }
    CHECK(error_code_of([&] { SqliteStore store(path); }) == ErrorCode::storage);
    RawDb raw(path);
    CHECK(raw.integer("PRAGMA user_version") == 0);  // Left untouched.
  }

  SECTION("a directory that does not exist") {
    CHECK(error_code_of([&] { SqliteStore store(dir.file("missing/keys.db")); }) ==
          ErrorCode::storage);
  }

  SECTION("an in-memory database (each connection would see its own)") {
    CHECK(error_code_of([&] { SqliteStore store(":memory:"); }) == ErrorCode::storage);
    CHECK(error_code_of([&] { SqliteStore store(""); }) == ErrorCode::storage);
  }
}

namespace {

// Counts SQLite's own allocations (xMalloc, and xRealloc, which may move a block) while
// it lives. SQLite takes its allocator when it initialises, so the counter shuts SQLite
// down around itself: no connection may be open, and no thread may use SQLite, when it
// is made or destroyed (sqlite3_shutdown() is undefined otherwise). CTest runs each
// test case in a process of its own; within one, declare the counter before any store.
std::atomic<std::size_t> g_sqlite_allocations{0};
sqlite3_mem_methods g_sqlite_default_methods{};

void* counting_malloc(int n) {
  g_sqlite_allocations.fetch_add(1, std::memory_order_relaxed);
  return g_sqlite_default_methods.xMalloc(n);
}
void* counting_realloc(void* p, int n) {
  g_sqlite_allocations.fetch_add(1, std::memory_order_relaxed);
  return g_sqlite_default_methods.xRealloc(p, n);
}

class SqliteAllocationCounter {
 public:
  SqliteAllocationCounter() {
    REQUIRE(sqlite3_shutdown() == SQLITE_OK);
    REQUIRE(sqlite3_config(SQLITE_CONFIG_GETMALLOC, &g_sqlite_default_methods) == SQLITE_OK);
    sqlite3_mem_methods counting = g_sqlite_default_methods;
    counting.xMalloc = counting_malloc;
    counting.xRealloc = counting_realloc;
    REQUIRE(sqlite3_config(SQLITE_CONFIG_MALLOC, &counting) == SQLITE_OK);
    REQUIRE(sqlite3_initialize() == SQLITE_OK);
  }
  ~SqliteAllocationCounter() {
    sqlite3_shutdown();
    sqlite3_config(SQLITE_CONFIG_MALLOC, &g_sqlite_default_methods);
    sqlite3_initialize();
  }
  SqliteAllocationCounter(const SqliteAllocationCounter&) = delete;
  SqliteAllocationCounter& operator=(const SqliteAllocationCounter&) = delete;

  // SQLite's allocations per call of `f`, over `calls` calls.
  template <typename F>
  static double per_call(int calls, F&& f) {
    const std::size_t before = g_sqlite_allocations.load();
    for (int i = 0; i < calls; ++i) f(i);
    return static_cast<double>(g_sqlite_allocations.load() - before) / calls;
  }
};

}  // namespace

// doc/sqlite-store.md, rule 37: Debian's SQLite allocates (under a process-wide mutex)
// for every text value of a result row, an empty one too. A validation's read of a key
// with no description, metadata, scopes or rate limits allocates only for its key id,
// account id and digest, and for the cursors of its statement.
TEST_CASE("SqliteStore reads a key's empty text columns without an allocation for each",
          "[store][sqlite]") {
  TempDir dir;
  const std::string path = dir.file("allocations.db");
  SqliteAllocationCounter counter;
  SqliteStore store(path, fast_options());
  constexpr int kKeys = 50;
  for (int i = 1; i <= kKeys; ++i)
    store.insert(record(static_cast<std::uint32_t>(i), account_id(1)));
  apikeys::KeyRecord full = record(kKeys + 1, account_id(1));
  full.info.description = "described";
  full.info.metadata = R"({"plan":"pro"})";
  full.info.scopes = {"keys:read", "keys:write"};
  full.info.rate_limits = {apikeys::RateLimit{"per-second", 10, std::chrono::seconds(1), 10}};
  store.insert(full);
  // Every text column, empty and not, still reads back as it was written.
  check_same_record(*store.find(public_key(1)), record(1, account_id(1)));
  check_same_record(*store.find(full.info.public_key), full);
  const auto verdict = store.find_for_validation(full.info.public_key);
  REQUIRE(verdict);
  CHECK(verdict->info.metadata == full.info.metadata);
  CHECK(verdict->info.scopes == full.info.scopes);
  CHECK(verdict->info.rate_limits == full.info.rate_limits);

  auto hit = [&](int i) { CHECK(store.find_for_validation(public_key(1 + i % kKeys))); };
  auto miss = [&](int i) {
    CHECK_FALSE(store.find_for_validation(public_key(static_cast<std::uint32_t>(1000 + i))));
  };
  (void)SqliteAllocationCounter::per_call(20, hit);  // statements prepared, pages read
  const double hits = SqliteAllocationCounter::per_call(200, hit);
  const double misses = SqliteAllocationCounter::per_call(200, miss);
  // Two cursors, then key_id, account_id, digest and the public key the hit flag
  // compares: 6. With the three empty columns read as text it was 11, and the credits
  // probe (its cursor and the lineage it compared) took 2 more before has_credits.
  CHECK(hits <= 6.0);
  CHECK(misses <= 6.5);  // a decoy row is the full key now and then
  // And the counter saw the library's SQLite (a library linked to a copy of its own
  // would leave these at 0).
  CHECK(hits >= 3.0);
  CHECK(misses >= 3.0);
}

TEST_CASE("SqliteStore finds a key only by its exact public key, whatever the column's collation",
          "[sqlite]") {
  // find() looks the key up through the public_key index and then compares the row's
  // key with the one presented, byte for byte (COLLATE BINARY). A database whose column
  // was given a case-insensitive collation (by hand, or by a tool) makes the index
  // return the row for another spelling; the comparison must still turn it away.
  TempDir dir;
  const std::string path = dir.file("nocase.db");
  {
    SqliteStore store(path, fast_options());
    store.insert(record(1, account_id(1)));
  }
  {
    RawDb raw(path);
    raw.exec("PRAGMA writable_schema = ON");
    raw.exec(
        "UPDATE sqlite_master SET sql = replace(sql, 'public_key   TEXT    NOT NULL', "
        "'public_key TEXT NOT NULL COLLATE NOCASE') WHERE name = 'api_keys'");
  }
  RawDb(path).exec("REINDEX");
  REQUIRE(RawDb(path)
              .text("SELECT sql FROM sqlite_master WHERE name = 'api_keys'")
              .find("COLLATE NOCASE") != std::string::npos);
  std::string other = public_key(1);
  for (char& c : other) {
    if (c >= 'a' && c <= 'z') {
      c = static_cast<char>(c - 'a' + 'A');
      break;
    }
  }
  REQUIRE(other != public_key(1));
  // The index now matches either spelling...
  REQUIRE(RawDb(path).integer("SELECT count(*) FROM api_keys WHERE public_key = '" + other + "'") ==
          1);
  SqliteStore store(path, fast_options());
  CHECK(store.find(public_key(1)));
  // ...and the store still answers only the exact one.
  CHECK_FALSE(store.find(other));
  CHECK_FALSE(store.find_for_validation(other));
}

TEST_CASE("SqliteStore keeps each key's credits flag equal to its lineage's credits row",
          "[sqlite][admission]") {
  // find() reads whether a key's lineage has credits from the row's has_credits, which
  // triggers keep (doc/sqlite-store.md, rule 38). A flag left at 0 while the lineage has
  // credits would let the key through uncharged: every change that adds or removes
  // credits or a key is followed here by the flag checked against the credits table,
  // and by a validation that must charge exactly when the lineage has credits.
  TempDir dir;
  const std::string path = dir.file("flag.db");
  auto store = std::make_shared<SqliteStore>(path, fast_options());
  apikeys::KeyManagerOptions mo;
  mo.validation.clock = std::make_shared<apikeys::ManualClock>(
      apikeys::from_unix_millis(apikeys_test::kTestStartMillis));
  mo.validation.record_last_use = false;
  apikeys::KeyManager manager(
      store,
      std::make_shared<apikeys::HmacSha256Hasher>(std::string("0123456789abcdefghijklmnopqrstuv")),
      mo);
  const apikeys::Uuid alice = account_id(1);
  auto mismatched = [&] {
    return RawDb(path).integer(
        "SELECT count(*) FROM api_keys AS k WHERE has_credits IS NOT EXISTS (SELECT 1 FROM"
        " key_credits AS c WHERE c.lineage_id = coalesce(k.lineage_id, k.key_id))");
  };
  auto token = [](const apikeys::CreatedKey& k) {
    return k.info.public_key + ":" + std::string(k.secret_key.reveal());
  };
  auto remaining = [&](const std::string& t) { return manager.validate(t).credits_remaining; };
  using Remaining = std::optional<std::uint64_t>;

  const apikeys::CreatedKey plain = manager.create(alice, apikeys::CreateRequest("plain"));
  apikeys::CreateRequest metered_request("metered");
  apikeys::Credits two;
  two.remaining = 2;
  metered_request.credits = two;
  const apikeys::CreatedKey metered = manager.create(alice, metered_request);
  CHECK(mismatched() == 0);
  CHECK(RawDb(path).integer("SELECT sum(has_credits) FROM api_keys") == 1);
  CHECK(remaining(token(plain)) == Remaining());
  CHECK(remaining(token(metered)) == Remaining(1));

  // Credits given to a key that had none (a credits row inserted).
  manager.set_credits(alice, plain.info.key_id, 1);
  CHECK(mismatched() == 0);
  CHECK(remaining(token(plain)) == Remaining(0));
  CHECK(manager.validate(token(plain)).code == apikeys::ValidationCode::usage_exceeded);

  // A rotated key (a row with a lineage) shares its lineage's credits.
  apikeys::RotateRequest rotation;
  rotation.grace = std::chrono::hours(1);
  const apikeys::CreatedKey successor = manager.rotate(alice, metered.info.key_id, rotation);
  CHECK(mismatched() == 0);
  CHECK(remaining(token(successor)) == Remaining(0));

  // Credits cleared (the row deleted): both keys of the lineage are unmetered at once.
  apikeys::KeyUpdate clear;
  clear.credits = apikeys::FieldUpdate<std::uint64_t>::clear();
  manager.update(alice, successor.info.key_id, clear);
  CHECK(mismatched() == 0);
  CHECK(remaining(token(successor)) == Remaining());
  CHECK(remaining(token(metered)) == Remaining());

  // Set again (INSERT OR REPLACE), then a key and its credits removed.
  apikeys::KeyUpdate five;
  five.credits = std::uint64_t{5};
  manager.update(alice, metered.info.key_id, five);
  CHECK(mismatched() == 0);
  CHECK(remaining(token(successor)) == Remaining(4));
  manager.set_credits(alice, metered.info.key_id, 3);
  CHECK(mismatched() == 0);
  CHECK(remaining(token(metered)) == Remaining(2));
  manager.remove(alice, plain.info.key_id);
  CHECK(mismatched() == 0);
  CHECK(RawDb(path).integer("SELECT count(*) FROM key_credits") == 1);
  CHECK(RawDb(path).integer("SELECT sum(has_credits) FROM api_keys") == 2);
}

TEST_CASE("SqliteStore's credits triggers find a lineage's keys through indexes", "[sqlite]") {
  // A credits row added or removed updates its lineage's keys; without an index on the
  // lookup that would scan every key of the file on each such change.
  TempDir dir;
  const std::string path = dir.file("plan.db");
  { SqliteStore store(path, fast_options()); }
  RawDb raw(path);
  const std::string plan = raw.rows(
      "EXPLAIN QUERY PLAN UPDATE api_keys SET has_credits = 1"
      " WHERE lineage_id = 'x' OR (lineage_id IS NULL AND key_id = 'x')",
      3);
  INFO(plan);
  CHECK(plan.find("SCAN") == std::string::npos);
  CHECK(plan.find("api_keys_lineage") != std::string::npos);

  // The triggers' own statements: a credits row added and removed steps over no table.
  {
    SqliteStore store(path, fast_options());
    for (std::uint32_t i = 1; i <= 50; ++i) store.insert(record(i, account_id(1)));
  }
  const std::string lineage = key_id(7).to_string();
  const std::string add = "INSERT INTO key_credits (lineage_id, remaining) VALUES (?1, 1)";
  const std::string drop = "DELETE FROM key_credits WHERE lineage_id = ?1";
  CHECK(raw.fullscan_steps(add, lineage) == 0);
  CHECK(raw.integer("SELECT sum(has_credits) FROM api_keys") == 1);
  CHECK(raw.fullscan_steps(drop, lineage) == 0);
  CHECK(raw.integer("SELECT sum(has_credits) FROM api_keys") == 0);
  // The counter does see a trigger's scan: without the index, the same rows are scanned.
  raw.exec("DROP INDEX api_keys_lineage");
  CHECK(raw.fullscan_steps(add, lineage) > 0);
}

// doc/sqlite-store.md, rules 30 and 37: only find() reads an empty value as empty, from
// the integer it selects for one; a NULL in a text column (a damaged row: the columns
// are NOT NULL) is a corrupt record in every read, never a key without rate limits.
TEST_CASE("SqliteStore reads a NULL text column as a corrupt record", "[store][sqlite]") {
  TempDir dir;
  const std::string path = dir.file("null.db");
  {
    SqliteStore store(path, fast_options());
    apikeys::KeyRecord limited = record(1, account_id(1));
    limited.info.rate_limits = {apikeys::RateLimit{"per-second", 10, std::chrono::seconds(1), 10}};
    store.insert(limited);
    store.insert(record(2, account_id(1)));
    store.insert(record(3, account_id(2)));
  }
  {
    // Only a damaged schema lets a NULL in: drop the NOT NULL constraints, then write one.
    RawDb raw(path);
    raw.exec("PRAGMA writable_schema = ON");
    raw.exec(
        "UPDATE sqlite_master SET sql = replace(replace(sql, 'rate_limits TEXT NOT NULL', "
        "'rate_limits TEXT'), 'scopes       TEXT    NOT NULL', 'scopes TEXT') "
        "WHERE name = 'api_keys'");
  }
  {
    RawDb raw(path);
    raw.exec("UPDATE api_keys SET rate_limits = NULL WHERE public_key = '" + public_key(1) + "'");
    raw.exec("UPDATE api_keys SET scopes = NULL WHERE public_key = '" + public_key(3) + "'");
    REQUIRE(raw.integer("SELECT count(*) FROM api_keys WHERE rate_limits IS NULL") == 1);
    REQUIRE(raw.integer("SELECT count(*) FROM api_keys WHERE scopes IS NULL") == 1);
  }
  SqliteStore store(path, fast_options());
  for (const auto& read :
       std::vector<std::function<void()>>{[&] { (void)store.find_for_validation(public_key(1)); },
                                          [&] { (void)store.find(public_key(1)); },
                                          [&] { (void)store.get(account_id(1), key_id(1)); },
                                          [&] { (void)store.list(account_id(1)); },
                                          [&] { (void)store.find_for_validation(public_key(3)); },
                                          [&] { (void)store.get(account_id(2), key_id(3)); }}) {
    const auto e = error_of(read);
    REQUIRE(e);
    CHECK(e->code() == ErrorCode::storage);
  }
  // The key beside them reads as written.
  check_same_record(*store.find(public_key(2)), record(2, account_id(1)));
}

TEST_CASE("SqliteStore reads a wrong-size digest as a storage error", "[store][sqlite]") {
  TempDir dir;
  const std::string path = dir.file("corrupt.db");
  SqliteStore store(path, fast_options());
  store.insert(record(1, account_id(1)));
  store.insert(record(2, account_id(1)));
  RawDb(path).exec("UPDATE api_keys SET digest = X'0102' WHERE public_key = '" + public_key(1) +
                   "'");
  const auto e = error_of([&] { (void)store.find(public_key(1)); });
  REQUIRE(e);
  CHECK(e->code() == ErrorCode::storage);
  CHECK(contains(e->what(), "digest"));
  CHECK(store.find(public_key(2)));  // The connection is still usable.
  CHECK(store.list(account_id(1)).size() == 2);
}

TEST_CASE("SqliteStore revision follows revokes and deletes made by another instance",
          "[store][sqlite]") {
  TempDir dir;
  const std::string path = dir.file("shared.db");
  SqliteStore reader(path, fast_options());
  SqliteStore writer(path, fast_options());  // Stands in for another process.
  const apikeys::Uuid alice = account_id(1);

  const std::uint64_t r0 = reader.revision();
  writer.insert(record(1, alice));
  writer.insert(record(2, alice));
  writer.record_last_use({{key_id(1), at(1000)}});
  CHECK(reader.revision() == r0);
  CHECK(reader.find(public_key(1))->info.status == KeyStatus::active);

  REQUIRE(writer.set_status(alice, key_id(1), KeyStatus::revoked));
  const std::uint64_t r1 = reader.revision();
  CHECK(r1 != r0);
  // The very next read sees the revoke: no reader keeps an old snapshot.
  CHECK(reader.find(public_key(1))->info.status == KeyStatus::revoked);

  CHECK_FALSE(writer.set_status(account_id(2), key_id(2), KeyStatus::revoked));
  CHECK_FALSE(writer.remove(account_id(2), key_id(2)));
  CHECK(reader.revision() == r1);

  REQUIRE(writer.remove(alice, key_id(2)));
  const std::uint64_t r2 = reader.revision();
  CHECK(r2 != r1);
  CHECK_FALSE(reader.find(public_key(2)));

  writer.insert(record(3, alice));
  CHECK(reader.revision() == r2);
}

TEST_CASE("SqliteStore opened read-only reads and refuses writes", "[store][sqlite]") {
  TempDir dir;
  const std::string path = dir.file("ro.db");
  const apikeys::Uuid alice = account_id(1);
  const apikeys::KeyRecord r = record(1, alice);
  { SqliteStore(path).insert(r); }

  SqliteStoreOptions options;
  options.read_only = true;
  SqliteStore store(path, options);
  check_same_record(*store.find(r.info.public_key), r);
  CHECK(store.list(alice).size() == 1);
  CHECK(store.revision() == 0);

  CHECK(error_code_of([&] { store.insert(record(2, alice)); }) == ErrorCode::storage);
  CHECK(error_code_of([&] { (void)store.set_status(alice, key_id(1), KeyStatus::revoked); }) ==
        ErrorCode::storage);
  CHECK(error_code_of([&] { (void)store.remove(alice, key_id(1)); }) == ErrorCode::storage);
  CHECK(error_code_of([&] { store.record_last_use({{key_id(1), at(1)}}); }) == ErrorCode::storage);
  CHECK(store.find(r.info.public_key)->info.status == KeyStatus::active);

  SECTION("an older schema is not migrated read-only") {
    const std::string old_path = dir.file("v1-ro.db");
    { RawDb(old_path).exec(kSchemaV1); }
    CHECK(error_code_of([&] { SqliteStore old(old_path, options); }) == ErrorCode::storage);
    CHECK(RawDb(old_path).integer("PRAGMA user_version") == 1);
  }

  SECTION("a missing file is not created") {
    CHECK(error_code_of([&] { SqliteStore missing(dir.file("none.db"), options); }) ==
          ErrorCode::storage);
  }
}

TEST_CASE("SqliteStore translates SQLite errors", "[store][sqlite]") {
  TempDir dir;
  const std::string path = dir.file("errors.db");
  SqliteStoreOptions options = fast_options();
  options.busy_timeout = std::chrono::milliseconds(50);
  SqliteStore store(path, options);
  store.insert(record(1, account_id(1)));

  SECTION("a duplicate is already_exists, and says which call failed") {
    const auto e = error_of([&] { store.insert(record(1, account_id(2))); });
    REQUIRE(e);
    CHECK(e->code() == ErrorCode::already_exists);
    CHECK(contains(e->what(), "insert"));
  }

  SECTION("a write lock held elsewhere is busy, and the store recovers") {
    {
      RawDb other(path);
      other.exec("BEGIN IMMEDIATE");
      CHECK(error_code_of([&] { store.insert(record(2, account_id(1))); }) == ErrorCode::busy);
      CHECK(error_code_of([&] { (void)store.remove(account_id(1), key_id(1)); }) ==
            ErrorCode::busy);
      CHECK(store.find(public_key(1)));  // WAL: reads go on while another writes.
      other.exec("ROLLBACK");
    }
    store.insert(record(2, account_id(1)));
    CHECK(store.find(public_key(2)));
  }
}

TEST_CASE("Two SqliteStores on one file, used from several threads", "[store][sqlite]") {
  TempDir dir;
  const std::string path = dir.file("threads.db");
  auto first = std::make_shared<SqliteStore>(path, fast_options());
  auto second = std::make_shared<SqliteStore>(path, fast_options());
  const std::shared_ptr<SqliteStore> stores[] = {first, second};

  constexpr std::uint32_t kThreads = 4;
  constexpr std::uint32_t kPerThread = 40;
  std::atomic<int> failures{0};
  std::atomic<int> wrong{0};
  std::vector<std::thread> threads;
  for (std::uint32_t t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      const apikeys::Uuid account = account_id(static_cast<std::uint8_t>(10 + t));
      try {
        for (std::uint32_t i = 0; i < kPerThread; ++i) {
          const std::uint32_t n = 1000 * (t + 1) + i;
          // Write through one instance, read through the other.
          SqliteStore& mine = *stores[(t + i) % 2];
          SqliteStore& theirs = *stores[(t + i + 1) % 2];
          mine.insert(record(n, account, i));
          auto got = theirs.find(public_key(n));
          if (!got || got->info.key_id != key_id(n)) ++wrong;
          if (i % 4 == 0 && !theirs.set_status(account, key_id(n), KeyStatus::revoked)) ++wrong;
          if (i % 8 == 0) theirs.record_last_use({{key_id(n), at(i)}});
          (void)mine.revision();
        }
      } catch (...) {
        ++failures;
      }
    });
  }
  for (auto& th : threads) th.join();
  CHECK(failures.load() == 0);
  CHECK(wrong.load() == 0);
  for (std::uint32_t t = 0; t < kThreads; ++t) {
    const auto keys = first->list(account_id(static_cast<std::uint8_t>(10 + t)));
    CHECK(keys.size() == kPerThread);
  }
  CHECK(first->revision() == second->revision());
  CHECK(first->revision() == kThreads * (kPerThread / 4));
}

TEST_CASE("SqliteStore reuses a read snapshot only while nothing it must see has changed",
          "[store][sqlite]") {
  TempDir dir;
  const std::string path = dir.file("snapshot.db");
  SqliteStoreOptions options = fast_options();
  options.read_snapshot_max_age = std::chrono::hours(1);  // only the rules below end one
  SqliteStore store(path, options);
  SqliteStore other(path, options);  // another object on the same file, same process
  const apikeys::Uuid alice = account_id(1);
  store.insert(record(1, alice));
  store.insert(record(2, alice));
  REQUIRE(store.find(public_key(1))->info.status == KeyStatus::active);  // snapshot taken

  SECTION("a write through this store shows at once") {
    REQUIRE(store.set_status(alice, key_id(1), KeyStatus::revoked));
    CHECK(store.find(public_key(1))->info.status == KeyStatus::revoked);
    REQUIRE(store.remove(alice, key_id(2)));
    CHECK_FALSE(store.find(public_key(2)));
    store.insert(record(3, alice));
    CHECK(store.find(public_key(3)));
  }
  SECTION("a write through another SqliteStore of this process shows at once") {
    REQUIRE(other.find(public_key(1)));  // `other` holds a snapshot too
    REQUIRE(other.set_status(alice, key_id(1), KeyStatus::revoked));
    CHECK(store.find(public_key(1))->info.status == KeyStatus::revoked);
    REQUIRE(store.remove(alice, key_id(2)));
    CHECK_FALSE(other.find(public_key(2)));
  }
  SECTION("another process's revoke shows once revision() has seen it") {
    // Several readers holding snapshots: finds from two threads at once (each round
    // starts both together, so their calls overlap and lease different readers).
    auto from_two_threads = [&](KeyStatus expected) {
      std::atomic<int> other_status{0};
      std::atomic<int> arrived{0};
      constexpr int kRounds = 200;
      auto run = [&] {
        for (int round = 1; round <= kRounds; ++round) {
          arrived.fetch_add(1);
          while (arrived.load() < 2 * round) std::this_thread::yield();
          const auto got = store.find(public_key(1));
          if (!got || got->info.status != expected) other_status.fetch_add(1);
        }
      };
      std::thread a(run);
      std::thread b(run);
      a.join();
      b.join();
      return other_status.load();
    };
    REQUIRE(from_two_threads(KeyStatus::active) == 0);
    RawDb raw(path);  // stands in for another process
    raw.exec("UPDATE api_keys SET status = 1 WHERE public_key = '" + public_key(1) + "'");
    raw.exec("UPDATE apikeys_meta SET revision = revision + 1 WHERE id = 1");
    // Within the snapshot's age the old row may still answer; revision() ends that, for
    // every reader (the validator clears its cache when revision() moves).
    (void)store.revision();
    CHECK(from_two_threads(KeyStatus::revoked) == 0);
  }
  SECTION("list() and revision() always read the file as it is now") {
    RawDb raw(path);
    raw.exec("UPDATE apikeys_meta SET revision = revision + 5 WHERE id = 1");
    raw.exec("DELETE FROM api_keys WHERE public_key = '" + public_key(2) + "'");
    CHECK(store.list(alice).size() == 1);
    CHECK(raw.integer("SELECT revision FROM apikeys_meta") ==
          static_cast<std::int64_t>(store.revision()));
  }
}

TEST_CASE("SqliteStore without snapshot reuse sees another process's write on the next read",
          "[store][sqlite]") {
  TempDir dir;
  const std::string path = dir.file("no-snapshot.db");
  SqliteStoreOptions options = fast_options();
  options.read_snapshot_max_age = std::chrono::microseconds(0);
  {
    // Out-of-range ages are clamped, never an overflow (the extremes open and read).
    SqliteStoreOptions extreme = fast_options();
    for (const auto age : {std::chrono::microseconds::max(), std::chrono::microseconds::min()}) {
      extreme.read_snapshot_max_age = age;
      SqliteStore s(dir.file("extreme.db"), extreme);
      CHECK_FALSE(s.find(public_key(1)));
    }
  }
  SqliteStore store(path, options);
  store.insert(record(1, account_id(1)));
  REQUIRE(store.find(public_key(1))->info.status == KeyStatus::active);
  RawDb raw(path);
  raw.exec("UPDATE api_keys SET status = 1 WHERE public_key = '" + public_key(1) + "'");
  CHECK(store.find(public_key(1))->info.status == KeyStatus::revoked);
}

TEST_CASE("SqliteStore ends idle read snapshots, so they never pin the WAL", "[store][sqlite]") {
  // A snapshot kept open forever would stop every checkpoint from emptying the WAL, which
  // would then grow with each write of every process. A TRUNCATE checkpoint succeeds only
  // when no reader holds an old snapshot.
  TempDir dir;
  const std::string path = dir.file("pin.db");
  SqliteStoreOptions options = fast_options();
  options.read_snapshot_max_age = std::chrono::milliseconds(20);
  SqliteStore store(path, options);
  store.insert(record(1, account_id(1)));
  REQUIRE(store.find(public_key(1)));  // leaves an idle reader holding a snapshot
  RawDb raw(path);
  raw.exec("UPDATE api_keys SET title = 'renamed' WHERE public_key = '" + public_key(1) + "'");
  // Eventually (the janitor runs every 0.1 s): no deadline is asserted, only that it ends.
  bool truncated = false;
  for (int i = 0; i < 200 && !truncated; ++i) {
    truncated = raw.integer("PRAGMA wal_checkpoint(TRUNCATE)") == 0;  // 0: not busy
    if (!truncated) std::this_thread::sleep_for(std::chrono::milliseconds(25));
  }
  CHECK(truncated);
  CHECK(store.find(public_key(1))->info.title == "renamed");

  // Readers left idle by many threads at once: each in its thread's home slot, or in
  // the shared list when two threads share a slot or a slot is full. The janitor ends
  // the snapshots of both.
  std::vector<std::thread> threads;
  std::atomic<int> found{0};
  std::atomic<int> ready{0};
  for (int t = 0; t < 12; ++t) {
    threads.emplace_back([&] {
      ++ready;
      while (ready.load() < 12) std::this_thread::yield();  // all hold a reader at once
      if (store.find(public_key(1))) ++found;
    });
  }
  for (auto& th : threads) th.join();
  CHECK(found.load() == 12);
  raw.exec("UPDATE api_keys SET title = 'again' WHERE public_key = '" + public_key(1) + "'");
  truncated = false;
  for (int i = 0; i < 200 && !truncated; ++i) {
    truncated = raw.integer("PRAGMA wal_checkpoint(TRUNCATE)") == 0;
    if (!truncated) std::this_thread::sleep_for(std::chrono::milliseconds(25));
  }
  CHECK(truncated);
  CHECK(store.find(public_key(1))->info.title == "again");
}

#if defined(__linux__)
TEST_CASE("SqliteStore: threads that come and go one after another share one reader",
          "[store][sqlite]") {
  // A thread pool that replaces its threads, or a server with a thread per request, must
  // not make the store open a connection per new thread until every home slot holds one:
  // a thread's home slot goes back when it exits, for the next thread to take.
  TempDir dir;
  const std::string path = dir.file("churn.db");
  SqliteStoreOptions options = fast_options();
  // No kept snapshots, so no janitor: the count below is of the readers the threads
  // need, and nothing else.
  options.read_snapshot_max_age = std::chrono::microseconds(0);
  SqliteStore store(path, options);
  store.insert(record(1, account_id(1)));
  const auto connections = [&] {
    const auto file = std::filesystem::canonical(path);
    std::size_t n = 0;
    for (const auto& fd : std::filesystem::directory_iterator("/proc/self/fd")) {
      std::error_code ec;
      n += std::filesystem::read_symlink(fd.path(), ec) == file;
    }
    return n;
  };
  const auto read_in_a_thread = [&] {
    bool found = false;
    std::thread([&] { found = store.find(public_key(1)).has_value(); }).join();
    CHECK(found);
  };
  read_in_a_thread();
  const std::size_t before = connections();
  for (int i = 0; i < 20; ++i) read_in_a_thread();
  CHECK(connections() == before);
}
#endif

namespace {

// Every detail line of EXPLAIN QUERY PLAN for `sql` on `path`, one per line.
std::string query_plan(const std::string& path, const std::string& sql) {
  sqlite3* db = nullptr;
  REQUIRE(sqlite3_open_v2(path.c_str(), &db, SQLITE_OPEN_READONLY, nullptr) == SQLITE_OK);
  sqlite3_stmt* stmt = nullptr;
  const int rc = sqlite3_prepare_v2(db, ("EXPLAIN QUERY PLAN " + sql).c_str(), -1, &stmt, nullptr);
  std::string plan;
  while (rc == SQLITE_OK && sqlite3_step(stmt) == SQLITE_ROW) {
    plan += reinterpret_cast<const char*>(sqlite3_column_text(stmt, 3));
    plan += '\n';
  }
  sqlite3_finalize(stmt);
  sqlite3_close(db);
  REQUIRE(rc == SQLITE_OK);
  return plan;
}

// The key as `store` has it now (it must exist).
apikeys::KeyInfo stored(SqliteStore& store, const apikeys::Uuid& account, std::uint32_t n) {
  auto got = store.get(account, key_id(n));
  REQUIRE(got);
  return *got;
}

}  // namespace

TEST_CASE("SqliteStore pages keys with one indexed query", "[store][sqlite]") {
  TempDir dir;
  const std::string path = dir.file("pages.db");
  SqliteStore store(path, fast_options());
  const apikeys::Uuid alice = account_id(1);
  const apikeys::Uuid bob = account_id(2);

  SECTION("every form of the page query walks the page index, in its order") {
    for (const bool after : {false, true}) {
      for (const bool status : {false, true}) {
        const std::string plan =
            query_plan(path, apikeys::detail::sqlite::list_page_sql(after, status));
        INFO(plan);
        CHECK(contains(plan, "USING INDEX api_keys_account_page (account_id=?"));
        CHECK_FALSE(contains(plan, "TEMP B-TREE"));        // no sort: the index gives the order
        if (after) CHECK(contains(plan, "created_at<?"));  // a seek, not a scan from the top
      }
    }
  }

  SECTION("pages follow (created_at, key_id) descending, ties included, and never repeat") {
    // Keys 1..6 at three creation times (pairs share a millisecond), one of bob's.
    for (std::uint32_t n = 1; n <= 6; ++n) store.insert(record(n, alice, (n - 1) / 2));
    store.insert(record(7, bob, 1));
    REQUIRE(store.set_status(alice, key_id(3), KeyStatus::revoked));
    // key_id(n) grows with n, so the expected order is 6, 5, 4, 3, 2, 1.
    std::vector<apikeys::Uuid> seen;
    std::optional<apikeys::PagePosition> after;
    for (;;) {
      const auto page = store.list_page(alice, after, 2, std::nullopt);
      if (page.empty()) break;
      CHECK(page.size() <= 2);
      for (const auto& k : page) seen.push_back(k.key_id);
      after = apikeys::PagePosition{page.back().created_at, page.back().key_id};
      // A key inserted meanwhile (newer than every page so far) is never listed later.
      if (seen.size() == 2) store.insert(record(8, alice, 100));
    }
    CHECK(seen == std::vector<apikeys::Uuid>{key_id(6), key_id(5), key_id(4), key_id(3), key_id(2),
                                             key_id(1)});
    // The default (sort list()) agrees with the query, filters included.
    for (const auto status :
         {std::optional<KeyStatus>{}, std::optional<KeyStatus>{KeyStatus::active},
          std::optional<KeyStatus>{KeyStatus::revoked}}) {
      const apikeys::PagePosition from{at(2), key_id(5)};
      const auto got = store.list_page(alice, from, 10, status);
      const auto want = store.Store::list_page(alice, from, 10, status);
      CHECK(apikeys_test::contract::ids_of(got) == apikeys_test::contract::ids_of(want));
      const auto first = store.list_page(alice, std::nullopt, 3, status);
      CHECK(apikeys_test::contract::ids_of(first) ==
            apikeys_test::contract::ids_of(store.Store::list_page(alice, std::nullopt, 3, status)));
    }
    const auto revoked = store.list_page(alice, std::nullopt, 10, KeyStatus::revoked);
    CHECK(apikeys_test::contract::ids_of(revoked) == std::vector<apikeys::Uuid>{key_id(3)});
    CHECK(store.list_page(alice, std::nullopt, 0, std::nullopt).empty());
    CHECK(store.list_page(account_id(3), std::nullopt, 10, std::nullopt).empty());
    CHECK(apikeys_test::contract::ids_of(store.list_page(bob, std::nullopt, 10, std::nullopt)) ==
          std::vector<apikeys::Uuid>{key_id(7)});
  }
}

TEST_CASE("SqliteStore replace is a compare-and-set that logs the change", "[store][sqlite]") {
  TempDir dir;
  const std::string path = dir.file("replace.db");
  SqliteStore store(path, fast_options());
  SqliteStore other(path, fast_options());
  const apikeys::Uuid alice = account_id(1);
  store.insert(record(1, alice));
  store.insert(record(2, alice));
  const std::uint64_t r0 = store.revision();

  apikeys::KeyInfo next = stored(store, alice, 1);
  CHECK(next.version == 1);
  next.title = "renamed";
  next.description = "about";
  next.metadata = R"({"team":"a"})";
  next.scopes = {"billing:read", "orders.*"};
  next.status = KeyStatus::disabled;
  next.expires_at = at(5000);
  next.updated_at = at(10);
  next.rotated_to = key_id(2);
  // Fields replace() does not write: ignored.
  next.public_key = "pk_ignored";
  next.created_at = at(99);
  next.version = 77;
  next.rotated_from = key_id(9);

  SECTION("the expected version writes every changeable field and bumps the version") {
    const apikeys::WriteResult w = store.replace(alice, next, 1);
    REQUIRE(w.outcome == apikeys::WriteOutcome::applied);
    for (const apikeys::KeyInfo& k : {w.key, stored(other, alice, 1)}) {
      CHECK(k.public_key == public_key(1));
      CHECK(k.title == "renamed");
      CHECK(k.description == "about");
      CHECK(k.metadata == R"({"team":"a"})");
      CHECK(k.scopes == std::vector<std::string>{"billing:read", "orders.*"});
      CHECK(k.status == KeyStatus::disabled);
      CHECK(k.expires_at == std::optional<apikeys::TimePoint>(at(5000)));
      CHECK(k.updated_at == at(10));
      CHECK(k.created_at == at(0));
      CHECK(k.version == 2);
      CHECK_FALSE(k.rotated_from);
      CHECK(k.rotated_to == std::optional<apikeys::Uuid>(key_id(2)));
    }
    CHECK(other.find(public_key(1))->info.status == KeyStatus::disabled);
    CHECK(other.revision() == r0 + 1);
    const auto changes = other.changes_since(r0);
    REQUIRE(changes);
    CHECK(changes->public_keys == std::vector<std::string>{public_key(1)});

    SECTION("a stale version is a conflict that returns the key as it is") {
      next.title = "lost update";
      const apikeys::WriteResult again = other.replace(alice, next, 1);
      CHECK(again.outcome == apikeys::WriteOutcome::conflict);
      CHECK(again.key.title == "renamed");
      CHECK(again.key.version == 2);
      CHECK(stored(store, alice, 1).title == "renamed");
      CHECK(store.revision() == r0 + 1);
    }
    SECTION("clearing optional fields writes NULL") {
      next.expires_at.reset();
      next.rotated_to.reset();
      next.scopes.clear();
      next.metadata.clear();
      const apikeys::WriteResult cleared = store.replace(alice, next, 2);
      REQUIRE(cleared.outcome == apikeys::WriteOutcome::applied);
      CHECK_FALSE(cleared.key.expires_at);
      CHECK_FALSE(cleared.key.rotated_to);
      CHECK(cleared.key.scopes.empty());
      CHECK(cleared.key.metadata.empty());
      CHECK(RawDb(path).integer("SELECT count(*) FROM api_keys WHERE key_id = '" +
                                key_id(1).to_string() +
                                "' AND expires_at IS NULL AND rotated_to IS NULL") == 1);
    }
  }

  SECTION("another account's key, or no key, is not_found and writes nothing") {
    CHECK(store.replace(account_id(2), next, 1).outcome == apikeys::WriteOutcome::not_found);
    apikeys::KeyInfo missing = next;
    missing.key_id = key_id(40);
    CHECK(store.replace(alice, missing, 1).outcome == apikeys::WriteOutcome::not_found);
    CHECK(stored(store, alice, 1).title == "key 1");
    CHECK(store.revision() == r0);
  }

  SECTION("a version past the column's range is a conflict") {
    const auto w = store.replace(alice, next, std::uint64_t{1} << 63);
    CHECK(w.outcome == apikeys::WriteOutcome::conflict);
    CHECK(w.key.version == 1);
  }

  SECTION("set_status moves the version only when the status changes") {
    CHECK(store.set_status(alice, key_id(2), KeyStatus::active)->version == 1);
    CHECK(store.set_status(alice, key_id(2), KeyStatus::disabled)->version == 2);
    CHECK(store.set_status(alice, key_id(2), KeyStatus::disabled)->version == 2);
    CHECK(store.set_status(alice, key_id(2), KeyStatus::revoked)->version == 3);
  }

  SECTION("get is scoped to the account") {
    CHECK(store.get(alice, key_id(1)));
    CHECK_FALSE(store.get(account_id(2), key_id(1)));
    CHECK_FALSE(store.get(alice, key_id(40)));
  }
}

TEST_CASE("SqliteStore rotate writes both keys or neither", "[store][sqlite]") {
  TempDir dir;
  const std::string path = dir.file("rotate.db");
  SqliteStore store(path, fast_options());
  const apikeys::Uuid alice = account_id(1);
  store.insert(record(1, alice));
  store.insert(record(2, alice));
  const std::uint64_t r0 = store.revision();

  apikeys::KeyInfo old_next = stored(store, alice, 1);
  old_next.expires_at = at(60);
  old_next.updated_at = at(50);
  old_next.rotated_to = key_id(3);
  apikeys::KeyRecord successor = record(3, alice, 50);
  successor.info.rotated_from = key_id(1);
  successor.info.scopes = {"read"};

  SECTION("applied: the old key points at its successor, which is stored") {
    const apikeys::WriteResult w = store.rotate(alice, old_next, 1, successor);
    REQUIRE(w.outcome == apikeys::WriteOutcome::applied);
    CHECK(w.key.version == 2);
    CHECK(w.key.rotated_to == std::optional<apikeys::Uuid>(key_id(3)));
    const auto found = store.find(public_key(3));
    REQUIRE(found);
    check_same_record(*found, successor);
    CHECK(found->info.rotated_from == std::optional<apikeys::Uuid>(key_id(1)));
    CHECK(found->info.scopes == std::vector<std::string>{"read"});
    CHECK(store.revision() == r0 + 1);
  }

  SECTION("a duplicate successor is already_exists and writes nothing") {
    successor.info.public_key = public_key(2);  // taken by key 2
    CHECK(error_code_of([&] { (void)store.rotate(alice, old_next, 1, successor); }) ==
          ErrorCode::already_exists);
    const apikeys::KeyInfo now = stored(store, alice, 1);
    CHECK(now.version == 1);
    CHECK_FALSE(now.rotated_to);
    CHECK_FALSE(now.expires_at);
    CHECK_FALSE(store.get(alice, key_id(3)));
    CHECK(store.revision() == r0);
    CHECK(store.changes_since(r0)->public_keys.empty());
  }

  SECTION("a stale version is a conflict and stores no successor") {
    const apikeys::WriteResult w = store.rotate(alice, old_next, 2, successor);
    CHECK(w.outcome == apikeys::WriteOutcome::conflict);
    CHECK(w.key.version == 1);
    CHECK_FALSE(store.find(public_key(3)));
    CHECK(store.rotate(account_id(2), old_next, 1, successor).outcome ==
          apikeys::WriteOutcome::not_found);
    CHECK_FALSE(store.find(public_key(3)));
  }
}

TEST_CASE("SqliteStore revoke_all revokes an account's keys in one transaction",
          "[store][sqlite]") {
  TempDir dir;
  const std::string path = dir.file("revoke-all.db");
  SqliteStore store(path, fast_options());
  const apikeys::Uuid alice = account_id(1);
  const apikeys::Uuid bob = account_id(2);

  SECTION("each key not yet revoked, as it now is, each logged") {
    for (std::uint32_t n = 1; n <= 4; ++n) store.insert(record(n, alice, n));
    store.insert(record(5, bob));
    REQUIRE(store.set_status(alice, key_id(2), KeyStatus::revoked));
    REQUIRE(store.set_status(alice, key_id(3), KeyStatus::disabled));
    const std::uint64_t r0 = store.revision();

    const auto revoked = store.revoke_all(alice, at(500));
    std::vector<apikeys::Uuid> ids = apikeys_test::contract::ids_of(revoked);
    std::sort(ids.begin(), ids.end());
    CHECK(ids == std::vector<apikeys::Uuid>{key_id(1), key_id(3), key_id(4)});
    for (const auto& k : revoked) {
      CHECK(k.status == KeyStatus::revoked);
      CHECK(k.updated_at == at(500));
      CHECK(k.version == (k.key_id == key_id(3) ? 3u : 2u));
    }
    CHECK(stored(store, alice, 2).version == 2);  // revoked before: untouched
    CHECK(stored(store, alice, 2).updated_at == record(2, alice, 2).info.updated_at);
    CHECK(stored(store, bob, 5).status == KeyStatus::active);
    CHECK(store.revision() == r0 + 3);
    const auto changes = store.changes_since(r0);
    REQUIRE(changes);
    std::vector<std::string> keys = changes->public_keys;
    std::sort(keys.begin(), keys.end());
    CHECK(keys == std::vector<std::string>{public_key(1), public_key(3), public_key(4)});
    CHECK(store.revoke_all(alice, at(600)).empty());  // nothing left to revoke
    CHECK(store.revision() == r0 + 3);
  }

  SECTION("more keys than the log keeps: changes_since refuses rather than drop a key") {
    const auto n = static_cast<std::uint32_t>(SqliteStore::kChangeLogSize) + 1;
    {
      RawDb raw(path);  // bulk insert, as the store would write them
      raw.exec("BEGIN");
      for (std::uint32_t i = 1; i <= n; ++i) {
        raw.exec(
            "INSERT INTO api_keys (key_id, account_id, public_key, digest, pepper_id, title,"
            " description, status, created_at, updated_at) VALUES ('" +
            key_id(i).to_string() + "', '" + alice.to_string() + "', '" + public_key(i) +
            "', zeroblob(32), 1, 't', '', 0, 0, 0)");
      }
      raw.exec("COMMIT");
    }
    const std::uint64_t r0 = store.revision();
    CHECK(store.revoke_all(alice, at(1)).size() == n);
    const std::uint64_t r1 = store.revision();
    CHECK(r1 == r0 + n);
    CHECK_FALSE(store.changes_since(r0));
    const auto kept = store.changes_since(r1 - SqliteStore::kChangeLogSize);
    REQUIRE(kept);
    CHECK(kept->public_keys.size() == SqliteStore::kChangeLogSize);
    CHECK(RawDb(path).integer("SELECT count(*) FROM apikeys_changes") ==
          static_cast<std::int64_t>(SqliteStore::kChangeLogSize));
  }
}

TEST_CASE("SqliteStore opened read-only refuses the policy writes too", "[store][sqlite]") {
  TempDir dir;
  const std::string path = dir.file("ro-policy.db");
  const apikeys::Uuid alice = account_id(1);
  { SqliteStore(path).insert(record(1, alice)); }
  SqliteStoreOptions options;
  options.read_only = true;
  SqliteStore store(path, options);
  apikeys::KeyInfo next = stored(store, alice, 1);
  next.title = "changed";
  CHECK(store.list_page(alice, std::nullopt, 10, std::nullopt).size() == 1);
  CHECK(error_code_of([&] { (void)store.replace(alice, next, 1); }) == ErrorCode::storage);
  CHECK(error_code_of([&] { (void)store.rotate(alice, next, 1, record(2, alice)); }) ==
        ErrorCode::storage);
  CHECK(error_code_of([&] { (void)store.revoke_all(alice, at(1)); }) == ErrorCode::storage);
  // A digest rewrite can never succeed here: not_supported, so a Validator stops asking
  // instead of failing at every flush.
  const apikeys::KeyRecord r = record(1, alice);
  apikeys::Digest moved = r.digest;
  moved.pepper_id += 1;
  CHECK(error_code_of([&] {
          (void)store.replace_digests({{r.info.key_id, r.digest, moved}});
        }) == ErrorCode::not_supported);
  CHECK(store.find(public_key(1))->digest.pepper_id == r.digest.pepper_id);
  CHECK(stored(store, alice, 1).title == "key 1");
  CHECK(stored(store, alice, 1).version == 1);
  CHECK_FALSE(store.find(public_key(2)));
}

TEST_CASE("Two SqliteStores racing replace with one expected version: exactly one applies",
          "[store][sqlite]") {
  TempDir dir;
  const std::string path = dir.file("race.db");
  SqliteStore first(path, fast_options());
  SqliteStore second(path, fast_options());
  SqliteStore* const stores[] = {&first, &second};
  const apikeys::Uuid alice = account_id(1);
  first.insert(record(1, alice));

  constexpr int kThreads = 4;
  constexpr int kRounds = 25;
  for (int round = 0; round < kRounds; ++round) {
    const std::uint64_t version = stored(first, alice, 1).version;
    std::atomic<int> ready{0};
    std::atomic<int> applied{0};
    std::atomic<int> conflicts{0};
    std::atomic<int> failures{0};
    std::vector<std::thread> threads;
    for (int t = 0; t < kThreads; ++t) {
      threads.emplace_back([&, t] {
        apikeys::KeyInfo next;
        next.key_id = key_id(1);
        next.title = "round " + std::to_string(round) + " thread " + std::to_string(t);
        next.updated_at = at(round);
        ++ready;
        while (ready.load() < kThreads) std::this_thread::yield();
        try {
          const auto w = stores[t % 2]->replace(alice, next, version);
          if (w.outcome == apikeys::WriteOutcome::applied && w.key.version == version + 1) {
            ++applied;
          } else if (w.outcome == apikeys::WriteOutcome::conflict && w.key.version == version + 1) {
            ++conflicts;
          } else {
            ++failures;
          }
        } catch (...) {
          ++failures;
        }
      });
    }
    for (auto& th : threads) th.join();
    REQUIRE(failures.load() == 0);
    REQUIRE(applied.load() == 1);
    REQUIRE(conflicts.load() == kThreads - 1);
  }
  CHECK(stored(second, alice, 1).version == 1 + kRounds);
  CHECK(second.revision() == static_cast<std::uint64_t>(kRounds));
}

namespace {

// The database the 0.1 command-line tool wrote (tests/fixtures/sqlite-v0.1/README.md).
const std::string kFixtureDir = APIKEYS_SQLITE_V01_FIXTURE_DIR;

nlohmann::json fixture_json() {
  std::ifstream in(kFixtureDir + "/keys.json", std::ios::binary);
  REQUIRE(in);
  return nlohmann::json::parse(in);
}

// "2026-12-03T07:59:55.650Z" as a time (the fixture's form: always milliseconds and Z).
apikeys::TimePoint fixture_time(const std::string& text) {
  int y = 0, mo = 0, d = 0, h = 0, mi = 0, sec = 0, ms = 0;
  REQUIRE(std::sscanf(text.c_str(), "%d-%d-%dT%d:%d:%d.%dZ", &y, &mo, &d, &h, &mi, &sec, &ms) == 7);
  // Days since 1970-01-01 in the proleptic Gregorian calendar (civil-from-days inverted).
  y -= mo <= 2 ? 1 : 0;
  const std::int64_t era = (y >= 0 ? y : y - 399) / 400;
  const std::int64_t yoe = y - era * 400;
  const std::int64_t doy = (153 * (mo + (mo > 2 ? -3 : 9)) + 2) / 5 + d - 1;
  const std::int64_t doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
  const std::int64_t days = era * 146097 + doe - 719468;
  return apikeys::from_unix_millis(((days * 24 + h) * 60 + mi) * 60'000 + sec * 1000 + ms);
}

}  // namespace

TEST_CASE("SqliteStore migrates the database of the 0.1 release and keeps every field",
          "[store][sqlite]") {
  TempDir dir;
  const std::string path = dir.file("keys.db");
  fs::copy_file(kFixtureDir + "/keys.db", path);
  const nlohmann::json fixture = fixture_json();
  const std::string original = file_bytes(path);

  // Read-only, an older schema is refused with the clear error, and nothing is written.
  SqliteStoreOptions read_only;
  read_only.read_only = true;
  const auto refused = error_of([&] { SqliteStore store(path, read_only); });
  REQUIRE(refused);
  CHECK(refused->code() == ErrorCode::storage);
  CHECK(contains(refused->what(), "older than this library's"));
  CHECK(contains(refused->what(), "open it read-write once to migrate"));
  CHECK(file_bytes(path) == original);

  auto store = std::make_shared<SqliteStore>(path);
  CHECK(RawDb(path).integer("PRAGMA user_version") == SqliteStore::schema_version());

  const apikeys::Uuid first_account = *apikeys::Uuid::parse("11111111-1111-4111-8111-111111111111");
  const apikeys::Uuid other_account = *apikeys::Uuid::parse("22222222-2222-4222-8222-222222222222");
  CHECK(store->list(first_account).size() == 3);
  CHECK(store->list(other_account).size() == 1);

  const auto& keys = fixture.at("keys");
  REQUIRE(keys.size() == 4);
  for (const auto& k : keys) {
    const std::string pk = k.at("public_key").get<std::string>();
    INFO(pk);
    const auto found = store->find(pk);
    REQUIRE(found);
    const apikeys::KeyInfo& info = found->info;
    CHECK(info.key_id.to_string() == k.at("key_id").get<std::string>());
    CHECK(info.account_id == (k.at("title") == "Other account" ? other_account : first_account));
    CHECK(info.title == k.at("title").get<std::string>());
    CHECK(info.description == k.at("description").get<std::string>());
    CHECK(std::string(apikeys::to_string(info.status)) == k.at("status").get<std::string>());
    CHECK(info.created_at == fixture_time(k.at("created_at").get<std::string>()));
    if (k.at("expires_at").is_null()) {
      CHECK_FALSE(info.expires_at);
    } else {
      CHECK(info.expires_at ==
            std::optional<apikeys::TimePoint>(fixture_time(k.at("expires_at").get<std::string>())));
    }
    const auto used = fixture.at("last_used_at").find(k.at("key_id").get<std::string>());
    if (used == fixture.at("last_used_at").end()) {
      CHECK_FALSE(info.last_used_at);
    } else {
      CHECK(info.last_used_at == std::optional<apikeys::TimePoint>(
                                     apikeys::from_unix_millis(used->get<std::int64_t>())));
    }
    CHECK(found->digest.pepper_id == fixture.at("pepper_id").get<std::uint32_t>());
    // The new fields, defaulted.
    CHECK(info.metadata.empty());
    CHECK(info.scopes.empty());
    CHECK(info.updated_at == info.created_at);
    CHECK(info.version == 1);
    CHECK_FALSE(info.rotated_from);
    CHECK_FALSE(info.rotated_to);
    const auto got = store->get(info.account_id, info.key_id);
    REQUIRE(got);
    CHECK(got->version == 1);
  }
  // The spot checks the fixture was made for.
  CHECK(store->find("pk_I482qlfYPpSsGxXcAb3oYMlzqbrmxbVv")->info.description ==
        "d\xC3\xA9j\xC3\xA0 vu \xE2\x80\x94 first");
  CHECK(store->find("pk_I482qlfYPpSsGxXcAb3oYMlzqbrmxbVv")->info.last_used_at ==
        std::optional<apikeys::TimePoint>(apikeys::from_unix_millis(1796284795953)));

  // The digests: every secret still validates with the fixture's pepper, at its time.
  const std::vector<std::uint8_t> pepper =
      apikeys_test::from_hex(fixture.at("pepper_hex").get<std::string>());
  auto hasher = std::make_shared<apikeys::HmacSha256Hasher>(
      std::string_view(reinterpret_cast<const char*>(pepper.data()), pepper.size()));
  auto clock = std::make_shared<apikeys::ManualClock>(
      fixture_time(keys.at(0).at("created_at").get<std::string>()));
  apikeys::KeyManagerOptions mo;
  mo.validation.clock = clock;
  mo.validation.record_last_use = false;
  apikeys::KeyManager manager(store, hasher, mo);
  for (const auto& k : keys) {
    const std::string pk = k.at("public_key").get<std::string>();
    INFO(pk);
    const auto result = manager.validate(pk, k.at("secret_key").get<std::string>());
    // Secret first: "revoked" also proves the secret matched its digest.
    CHECK(result.code == (k.at("status") == "revoked" ? apikeys::ValidationCode::revoked
                                                      : apikeys::ValidationCode::valid));
    CHECK(manager.validate(pk, "sk_" + std::string(32, 'x')).code ==
          apikeys::ValidationCode::wrong_secret);
  }
}

// ---------------------------------------------------------------------------------
// The audit trail: schema version 6, events written in their change's transaction.

namespace {

// Schema versions 3 to 5 exactly as released (the steps after kSchemaV2), marked as
// apikeys' file as every release since the marker does. Do not edit.
constexpr const char* kSchemaV3ToV5 = R"sql(
CREATE TABLE apikeys_changes (
  revision   INTEGER NOT NULL PRIMARY KEY,
  public_key TEXT    NOT NULL
);
ALTER TABLE api_keys ADD COLUMN metadata     TEXT    NOT NULL DEFAULT '';
ALTER TABLE api_keys ADD COLUMN scopes       TEXT    NOT NULL DEFAULT '';
ALTER TABLE api_keys ADD COLUMN updated_at   INTEGER NOT NULL DEFAULT 0;
ALTER TABLE api_keys ADD COLUMN version      INTEGER NOT NULL DEFAULT 1;
ALTER TABLE api_keys ADD COLUMN rotated_from TEXT;
ALTER TABLE api_keys ADD COLUMN rotated_to   TEXT;
UPDATE api_keys SET updated_at = created_at;
CREATE INDEX api_keys_account_page ON api_keys (account_id, created_at DESC, key_id DESC);
ALTER TABLE api_keys ADD COLUMN lineage_id  TEXT;
ALTER TABLE api_keys ADD COLUMN rate_limits TEXT NOT NULL DEFAULT '';
CREATE TABLE key_credits (
  lineage_id      TEXT    NOT NULL PRIMARY KEY,
  remaining       INTEGER NOT NULL,
  refill_amount   INTEGER,
  refill_interval INTEGER NOT NULL DEFAULT 0,
  refill_mode     INTEGER NOT NULL DEFAULT 0,
  refill_cap      INTEGER NOT NULL DEFAULT 0,
  refilled_period INTEGER NOT NULL DEFAULT 0,
  last_take       INTEGER NOT NULL DEFAULT 0
) WITHOUT ROWID;
PRAGMA user_version = 5;
PRAGMA application_id = 1634756971;
)sql";

// A ChangeAudit that keeps the states it is given and answers each with an event
// carrying them in before/after ("null", or "<key_id>@<version>"), or throws.
class RecordingAudit final : public apikeys::ChangeAudit {
 public:
  struct Call {
    std::optional<apikeys::KeyInfo> before;
    std::optional<apikeys::KeyInfo> after;
  };

  explicit RecordingAudit(bool fail = false) : fail_(fail) {}

  std::optional<apikeys::AuditEvent> event(const apikeys::KeyInfo* before,
                                           const apikeys::KeyInfo* after) const override {
    Call call;
    if (before != nullptr) call.before = *before;
    if (after != nullptr) call.after = *after;
    calls_.push_back(call);
    if (fail_) throw Refused();
    const apikeys::KeyInfo& some = after != nullptr ? *after : *before;
    apikeys::AuditEvent e;
    e.event_id = apikeys::Uuid::random();
    e.time = at(static_cast<std::int64_t>(calls_.size()));
    e.action = apikeys::AuditAction::update;
    e.context.actor = {apikeys::ActorType::user, "op", "10.0.0.1"};
    e.context.reason = "test";
    e.account_id = some.account_id;
    e.key_id = some.key_id;
    e.before = state(before);
    e.after = state(after);
    return e;
  }

  static std::string state(const apikeys::KeyInfo* k) {
    return k == nullptr ? "null" : k->key_id.to_string() + "@" + std::to_string(k->version);
  }

  // Not an apikeys::Error, nor a std::exception: it must reach the caller as thrown.
  struct Refused {};

  [[nodiscard]] const std::vector<Call>& calls() const { return calls_; }

 private:
  bool fail_;
  mutable std::vector<Call> calls_;
};

apikeys::AuditRange newest(std::size_t limit = 100) {
  apikeys::AuditRange r;
  r.limit = limit;
  return r;
}

}  // namespace

TEST_CASE("SqliteStore migrates a version 5 database to the audit trail and keeps its keys",
          "[store][sqlite][audit]") {
  TempDir dir;
  const std::string path = dir.file("v5.db");
  const apikeys::Uuid alice = account_id(1);
  {
    RawDb raw(path);
    raw.exec(kSchemaV1);
    raw.exec(kSchemaV2);
    raw.exec(kSchemaV3ToV5);
    raw.exec("PRAGMA journal_mode = WAL");
    // A rotated pair sharing a lineage with credits, as version 5 wrote them.
    raw.exec(
        "INSERT INTO api_keys (key_id, account_id, public_key, digest, pepper_id, title,"
        " description, status, created_at, expires_at, last_used_at, metadata, scopes,"
        " updated_at, version, rotated_from, rotated_to, lineage_id, rate_limits) VALUES"
        " ('" +
        key_id(1).to_string() + "', '" + alice.to_string() + "', '" + public_key(1) + "', X'" +
        std::string(64, 'b') +
        "', 3, 'old', 'd', 0, 1735689600000, NULL, NULL, '', 'read', 1735689600500, 4, NULL,"
        " '" +
        key_id(2).to_string() + "', NULL, 'rps=10/1000/5'), ('" + key_id(2).to_string() + "', '" +
        alice.to_string() + "', '" + public_key(2) + "', X'" + std::string(64, 'c') +
        "', 3, 'new', '', 0, 1735689601000, NULL, NULL, '', 'read', 1735689601000, 1, '" +
        key_id(1).to_string() + "', NULL, '" + key_id(1).to_string() + "', '')");
    raw.exec("INSERT INTO key_credits (lineage_id, remaining) VALUES ('" + key_id(1).to_string() +
             "', 42)");
    raw.exec("UPDATE apikeys_meta SET revision = 9");
  }
  {
    SqliteStore store(path, fast_options());
    CHECK(store.keeps_audit());
    const auto old_key = store.get(alice, key_id(1));
    REQUIRE(old_key);
    CHECK(old_key->title == "old");
    CHECK(old_key->version == 4);
    CHECK(old_key->rotated_to == std::optional<apikeys::Uuid>(key_id(2)));
    CHECK(old_key->scopes == std::vector<std::string>{"read"});
    REQUIRE(old_key->rate_limits.size() == 1);
    CHECK(old_key->rate_limits[0].limit == 10);
    REQUIRE(old_key->credits);
    CHECK(old_key->credits->remaining == 42);
    const auto new_key = store.find(public_key(2));
    REQUIRE(new_key);
    CHECK(new_key->info.lineage() == key_id(1));
    CHECK(new_key->digest.pepper_id == 3);
    CHECK(new_key->info.credits.has_value());
    CHECK(store.revision() == 9);
    CHECK(store.audit_events(alice, newest()).empty());

    // The migrated file takes audited writes.
    apikeys::KeyInfo next = *old_key;
    next.title = "renamed";
    RecordingAudit audit;
    REQUIRE(store.replace_audited(alice, next, 4, audit).outcome == apikeys::WriteOutcome::applied);
    const auto events = store.audit_events(alice, newest());
    REQUIRE(events.size() == 1);
    CHECK(events[0].after == key_id(1).to_string() + "@5");
  }
  RawDb raw(path);
  CHECK(raw.integer("PRAGMA user_version") == SqliteStore::schema_version());
  CHECK(raw.integer("PRAGMA application_id") == SqliteStore::application_id());
  CHECK(raw.integer("SELECT count(*) FROM api_keys") == 2);
  CHECK(raw.integer("SELECT count(*) FROM audit_events") == 1);
  CHECK(raw.integer("SELECT count(*) FROM sqlite_master WHERE type = 'index' AND name IN"
                    " ('audit_events_account_time', 'audit_events_account_key_time',"
                    " 'audit_events_time')") == 3);
  CHECK(raw.text("PRAGMA integrity_check") == "ok");
}

TEST_CASE("SqliteStore writes an audit event and its change in one transaction",
          "[store][sqlite][audit]") {
  TempDir dir;
  const std::string path = dir.file("audit.db");
  SqliteStore store(path, fast_options());
  const apikeys::Uuid alice = account_id(1);
  store.insert(
      apikeys_test::contract::lineage_record(1, alice, apikeys_test::contract::credits_of(50)));
  store.insert(record(2, alice, 2));
  const std::uint64_t revision = store.revision();
  const auto rows = [&] { return RawDb(path).integer("SELECT count(*) FROM audit_events"); };
  // The key as it is, as the writes' before-state would read it.
  const auto version_of = [&](std::uint32_t n) { return stored(store, alice, n).version; };

  SECTION("a ChangeAudit that throws leaves every write undone, and no event") {
    RecordingAudit failing(true);
    const auto refused = [](auto&& write) {
      bool thrown = false;
      try {
        write();
      } catch (const RecordingAudit::Refused&) {
        thrown = true;  // as thrown: not translated into a storage error
      }
      return thrown;
    };
    CHECK(refused([&] { store.insert_audited(record(3, alice), failing); }));
    CHECK_FALSE(store.find(public_key(3)));

    apikeys::KeyInfo next = stored(store, alice, 1);
    next.title = "changed";
    CHECK(refused([&] { (void)store.replace_audited(alice, next, 1, failing); }));
    CHECK(stored(store, alice, 1).title == "key 1");

    apikeys::KeyRecord successor = record(4, alice, 4);
    successor.info.lineage_id = key_id(1);
    next.rotated_to = key_id(4);
    CHECK(refused([&] { (void)store.rotate_audited(alice, next, 1, successor, failing); }));
    CHECK_FALSE(store.find(public_key(4)));
    CHECK_FALSE(stored(store, alice, 1).rotated_to);

    CHECK(refused([&] { (void)store.remove_audited(alice, key_id(2), failing); }));
    CHECK(store.get(alice, key_id(2)));

    CHECK(refused([&] { (void)store.revoke_all_audited(alice, at(10), failing); }));
    CHECK(stored(store, alice, 1).status == KeyStatus::active);
    CHECK(stored(store, alice, 2).status == KeyStatus::active);

    apikeys::CreditsChange add;
    add.op = apikeys::CreditsOp::add;
    add.delta = 5;
    add.at = at(10);
    CHECK(refused([&] { (void)store.change_credits_audited(alice, key_id(1), add, failing); }));
    CHECK(stored(store, alice, 1).credits->remaining == 50);

    CHECK(failing.calls().size() == 6);  // each write asked, once
    CHECK(version_of(1) == 1);
    CHECK(version_of(2) == 1);
    CHECK(store.revision() == revision);  // no change logged
    CHECK(rows() == 0);
    CHECK(store.audit_events(alice, newest()).empty());

    // The store is usable afterwards: the writer was not left inside a transaction.
    RecordingAudit ok;
    store.insert_audited(record(3, alice), ok);
    CHECK(rows() == 1);
  }

  SECTION("a failing change writes no event though the audit was asked") {
    RecordingAudit audit;
    // A duplicate successor: the rotation's first event was built, then the insert failed.
    apikeys::KeyInfo next = stored(store, alice, 1);
    next.rotated_to = key_id(2);
    CHECK(error_code_of([&] {
            (void)store.rotate_audited(alice, next, 1, record(2, alice, 2), audit);
          }) == ErrorCode::already_exists);
    CHECK(audit.calls().size() == 1);
    CHECK(rows() == 0);
    CHECK(version_of(1) == 1);
    // A duplicate event id: the change rolls back with it.
    class SameId final : public apikeys::ChangeAudit {
     public:
      std::optional<apikeys::AuditEvent> event(const apikeys::KeyInfo* /*before*/,
                                               const apikeys::KeyInfo* after) const override {
        apikeys::AuditEvent e;
        e.event_id = key_id(99);
        e.account_id = after->account_id;
        e.key_id = after->key_id;
        return e;
      }
    } same;
    store.insert_audited(record(5, alice), same);
    CHECK(error_code_of([&] { store.insert_audited(record(6, alice), same); }) ==
          ErrorCode::already_exists);
    CHECK_FALSE(store.find(public_key(6)));
    CHECK(rows() == 1);
  }

  SECTION("each audited write gives the states it committed, and its events read back") {
    RecordingAudit audit;
    apikeys::KeyInfo next = stored(store, alice, 2);
    next.title = "two";
    REQUIRE(store.replace_audited(alice, next, 1, audit).outcome == apikeys::WriteOutcome::applied);
    REQUIRE(audit.calls().size() == 1);
    CHECK(audit.calls()[0].before->title == "key 2");
    CHECK(audit.calls()[0].before->version == 1);
    CHECK(audit.calls()[0].after->title == "two");
    CHECK(audit.calls()[0].after->version == 2);

    // Conflict and not found: no call.
    CHECK(store.replace_audited(alice, next, 1, audit).outcome == apikeys::WriteOutcome::conflict);
    next.key_id = key_id(77);
    CHECK(store.replace_audited(alice, next, 1, audit).outcome == apikeys::WriteOutcome::not_found);
    CHECK_FALSE(store.remove_audited(alice, key_id(77), audit));
    CHECK(audit.calls().size() == 1);

    // Rotation: the old key's event, then the successor's, with the lineage's credits.
    apikeys::KeyInfo old_next = stored(store, alice, 1);
    old_next.rotated_to = key_id(4);
    apikeys::KeyRecord successor = record(4, alice, 4);
    successor.info.lineage_id = key_id(1);
    successor.info.rotated_from = key_id(1);
    REQUIRE(store.rotate_audited(alice, old_next, 1, successor, audit).outcome ==
            apikeys::WriteOutcome::applied);
    REQUIRE(audit.calls().size() == 3);
    CHECK(audit.calls()[1].before->version == 1);
    CHECK(audit.calls()[1].after->rotated_to == std::optional<apikeys::Uuid>(key_id(4)));
    CHECK_FALSE(audit.calls()[2].before);
    CHECK(audit.calls()[2].after->key_id == key_id(4));
    REQUIRE(audit.calls()[2].after->credits);
    CHECK(audit.calls()[2].after->credits->remaining == 50);

    apikeys::CreditsChange add;
    add.op = apikeys::CreditsOp::add;
    add.delta = -8;
    add.at = at(10);
    REQUIRE(store.change_credits_audited(alice, key_id(4), add, audit));
    REQUIRE(audit.calls().size() == 4);
    CHECK(audit.calls()[3].before->credits->remaining == 50);
    CHECK(audit.calls()[3].after->credits->remaining == 42);
    // Removing credits a lineage does not have writes nothing: no event.
    apikeys::CreditsChange none;
    none.op = apikeys::CreditsOp::remove;
    REQUIRE(store.change_credits_audited(alice, key_id(2), none, audit));
    CHECK(audit.calls().size() == 4);

    // revoke_all: one event per key it revokes, each with that key's before.
    const auto revoked = store.revoke_all_audited(alice, at(20), audit);
    REQUIRE(revoked.size() == 3);
    REQUIRE(audit.calls().size() == 7);
    for (std::size_t i = 4; i < 7; ++i) {
      const auto& call = audit.calls()[i];
      CHECK(call.before->key_id == call.after->key_id);
      CHECK(call.before->status == KeyStatus::active);
      CHECK(call.after->status == KeyStatus::revoked);
      CHECK(call.after->version == call.before->version + 1);
    }
    CHECK(store.revoke_all_audited(alice, at(21), audit).empty());
    CHECK(audit.calls().size() == 7);

    const auto removed = store.remove_audited(alice, key_id(2), audit);
    REQUIRE(removed);
    REQUIRE(audit.calls().size() == 8);
    CHECK(audit.calls()[7].before->key_id == key_id(2));
    CHECK_FALSE(audit.calls()[7].after);

    // Every event, newest first, exactly as built; and one row per event.
    const auto events = store.audit_events(alice, newest(1000));
    REQUIRE(events.size() == 8);
    CHECK(rows() == 8);
    for (std::size_t i = 0; i < events.size(); ++i) {
      const auto& call = audit.calls()[events.size() - 1 - i];
      INFO("event " << i);
      CHECK(events[i].time == at(static_cast<std::int64_t>(events.size() - i)));
      CHECK(events[i].before == RecordingAudit::state(call.before ? &*call.before : nullptr));
      CHECK(events[i].after == RecordingAudit::state(call.after ? &*call.after : nullptr));
      CHECK(events[i].context.actor.type == apikeys::ActorType::user);
      CHECK(events[i].context.actor.id == "op");
      CHECK(events[i].context.actor.detail == "10.0.0.1");
      CHECK(events[i].context.reason == "test");
      CHECK(events[i].account_id == alice);
    }
    apikeys::AuditRange one_key = newest();
    one_key.key_id = key_id(2);
    CHECK(store.audit_events(alice, one_key).size() == 3);  // replace, revoke_all, remove
    CHECK(store.audit_events(account_id(2), newest()).empty());
  }
}

TEST_CASE("SqliteStore refuses an audit prune batch of 0, and touches no file",
          "[store][sqlite][audit]") {
  TempDir dir;
  const std::string path = dir.file("batch-0.db");
  CHECK(SqliteStoreOptions{}.audit_prune_batch == 10'000);  // README.md's figure
  SqliteStoreOptions options = fast_options();
  options.audit_prune_batch = 0;
  CHECK(error_code_of([&] { SqliteStore store(path, options); }) == ErrorCode::invalid_argument);
  CHECK_FALSE(std::filesystem::exists(path));
}

TEST_CASE("SqliteStore keeps audit events byte for byte and pages them by an index",
          "[store][sqlite][audit]") {
  TempDir dir;
  const std::string path = dir.file("audit-pages.db");
  SqliteStore store(path, fast_options());
  const apikeys::Uuid alice = account_id(1);
  const apikeys::Uuid bob = account_id(2);

  // Events given by hand: two per millisecond, ids out of order, two keys and accounts.
  class Given final : public apikeys::ChangeAudit {
   public:
    explicit Given(apikeys::AuditEvent e) : e_(std::move(e)) {}
    std::optional<apikeys::AuditEvent> event(const apikeys::KeyInfo* /*before*/,
                                             const apikeys::KeyInfo* /*after*/) const override {
      return e_;
    }

   private:
    apikeys::AuditEvent e_;
  };
  std::vector<apikeys::AuditEvent> given;
  for (std::uint32_t n = 1; n <= 8; ++n) {
    apikeys::AuditEvent e;
    e.event_id = key_id((n * 5) % 9 + 100);  // distinct, not in time order
    e.time = at((n + 1) / 2);                // 1, 1, 2, 2, 3, 3, 4, 4
    e.action = static_cast<apikeys::AuditAction>(n % 2 == 0 ? 200 : 3);  // unknown kept
    e.context.actor = {apikeys::ActorType::service, std::string("svc\0x", 5), "\xff\xfe"};
    e.context.reason = std::string(3000, 'r');
    e.account_id = n == 8 ? bob : alice;
    e.key_id = key_id(n % 2 + 1);
    e.before = R"({"title":"a\u0000b"})";
    e.after = std::string("not json \0 at all", 17);
    store.insert_audited(record(n, e.account_id, n), Given(e));
    given.push_back(e);
  }

  SECTION("every field reads back as it was given") {
    const auto events = store.audit_events(bob, newest());
    REQUIRE(events.size() == 1);
    const apikeys::AuditEvent& got = events[0];
    const apikeys::AuditEvent& want = given[7];
    CHECK(got.event_id == want.event_id);
    CHECK(got.time == want.time);
    CHECK(static_cast<int>(got.action) == 200);
    CHECK(got.context.actor.type == want.context.actor.type);
    CHECK(got.context.actor.id == want.context.actor.id);
    CHECK(got.context.actor.detail == want.context.actor.detail);
    CHECK(got.context.reason == want.context.reason);
    CHECK(got.account_id == want.account_id);
    CHECK(got.key_id == want.key_id);
    CHECK(got.before == want.before);
    CHECK(got.after == want.after);
  }

  SECTION("pages run newest first, ties by event id descending, and never repeat") {
    std::vector<apikeys::AuditEvent> want(given.begin(), given.begin() + 7);  // alice's
    std::sort(want.begin(), want.end(), [](const auto& a, const auto& b) {
      if (a.time != b.time) return a.time > b.time;
      return b.event_id < a.event_id;
    });
    std::vector<apikeys::Uuid> seen;
    apikeys::AuditRange range = newest(2);
    for (;;) {
      const auto page = store.audit_events(alice, range);
      if (page.empty()) break;
      CHECK(page.size() <= 2);
      for (const auto& e : page) seen.push_back(e.event_id);
      range.after = apikeys::AuditPosition{page.back().time, page.back().event_id};
    }
    std::vector<apikeys::Uuid> ids;
    for (const auto& e : want) ids.push_back(e.event_id);
    CHECK(seen == ids);

    apikeys::AuditRange since = newest();
    since.since = at(3) - std::chrono::microseconds(1);  // rounds up to at(3)
    CHECK(store.audit_events(alice, since).size() == 3);
    since.key_id = key_id(2);  // odd n: times 1, 2, 3, 4 (n = 1, 3, 5, 7)
    CHECK(store.audit_events(alice, since).size() == 2);
    // A position between two milliseconds starts at the one before.
    apikeys::AuditRange between = newest();
    between.after = apikeys::AuditPosition{at(3) - std::chrono::microseconds(1), key_id(0)};
    CHECK(store.audit_events(alice, between).size() == 4);
  }

  SECTION("prune_audit deletes every account's events older than the time") {
    CHECK(store.prune_audit(at(3) - std::chrono::microseconds(1)) == 4);  // times 1 and 2
    CHECK(store.audit_events(alice, newest()).size() == 3);
    CHECK(store.audit_events(bob, newest()).size() == 1);
    CHECK(store.prune_audit(at(3)) == 0);
    CHECK(store.prune_audit(at(100)) == 4);
    CHECK(store.audit_events(alice, newest()).empty());
    CHECK(store.find(public_key(1)));  // keys are not touched
  }

  SECTION("prune_audit deletes oldest first, each batch its own transaction") {
    SqliteStoreOptions small = fast_options();
    small.audit_prune_batch = 3;
    SqliteStore batched(path, small);
    // The second batch (times 2, 3, 3) fails on an event of time 3: the first (1, 1, 2)
    // stays deleted, the second is rolled back whole.
    RawDb raw(path);
    raw.exec("CREATE TRIGGER refuse_prune BEFORE DELETE ON audit_events WHEN OLD.time_ms = " +
             std::to_string(apikeys::to_unix_millis(at(3))) +
             " BEGIN SELECT RAISE(ABORT, 'refused'); END");
    CHECK_THROWS_AS(batched.prune_audit(at(100)), apikeys::Error);
    CHECK(batched.audit_events(alice, newest()).size() == 4);  // times 2, 3, 3, 4
    CHECK(batched.audit_events(bob, newest()).size() == 1);
    raw.exec("DROP TRIGGER refuse_prune");
    CHECK(batched.prune_audit(at(100)) == 5);  // the rest, in batches of 3 and 2
    CHECK(batched.audit_events(alice, newest()).empty());
  }

  SECTION("prune_audit goes on batch after batch until none is left") {
    SqliteStoreOptions small = fast_options();
    small.audit_prune_batch = 3;  // 6 events: batches of 3, 3 and an empty one; then 2
    SqliteStore batched(path, small);
    CHECK(batched.prune_audit(at(4) - std::chrono::microseconds(1)) == 6);  // times 1 to 3
    CHECK(batched.audit_events(alice, newest()).size() == 1);
    CHECK(batched.audit_events(bob, newest()).size() == 1);
    CHECK(batched.prune_audit(at(100)) == 2);
    CHECK(batched.audit_events(alice, newest()).empty());
    CHECK(batched.audit_events(bob, newest()).empty());
  }

  SECTION("every form of the page query walks an audit index, in its order") {
    for (const bool key : {false, true}) {
      for (const bool since : {false, true}) {
        for (const bool after : {false, true}) {
          const std::string plan =
              query_plan(path, apikeys::detail::sqlite::audit_events_sql(key, since, after));
          INFO(plan);
          CHECK(contains(plan, key ? "USING INDEX audit_events_account_key_time (account_id=? "
                                     "AND key_id=?"
                                   : "USING INDEX audit_events_account_time (account_id=?"));
          CHECK_FALSE(contains(plan, "TEMP B-TREE"));
          // A seek into the range, not a scan from the newest.
          if (after) CHECK(contains(plan, "time_ms<?"));
          if (since) CHECK(contains(plan, "time_ms>?"));
        }
      }
    }
    CHECK(contains(query_plan(path, apikeys::detail::sqlite::kPruneAuditSql), "audit_events_time"));
  }
}

TEST_CASE("A read-only SqliteStore reads the audit trail and writes none of it",
          "[store][sqlite][audit]") {
  TempDir dir;
  const std::string path = dir.file("audit-ro.db");
  const apikeys::Uuid alice = account_id(1);
  {
    SqliteStore writer(path, fast_options());
    RecordingAudit audit;
    writer.insert_audited(record(1, alice), audit);
  }
  SqliteStoreOptions options = fast_options();
  options.read_only = true;
  SqliteStore store(path, options);
  CHECK(store.keeps_audit());
  REQUIRE(store.audit_events(alice, newest()).size() == 1);
  RecordingAudit audit;
  CHECK(error_code_of([&] { store.insert_audited(record(2, alice), audit); }) ==
        ErrorCode::storage);
  CHECK(error_code_of([&] { (void)store.prune_audit(at(1000)); }) == ErrorCode::storage);
  CHECK(audit.calls().empty());
  CHECK(store.audit_events(alice, newest()).size() == 1);
}
