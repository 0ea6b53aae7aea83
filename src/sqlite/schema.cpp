#include "sqlite/schema.hpp"

#include <sqlite3.h>

#include <SQLiteCpp/Exception.h>
#include <SQLiteCpp/Statement.h>
#include <SQLiteCpp/Transaction.h>
#include <fmt/format.h>

#include <filesystem>
#include <fstream>
#include <iterator>
#include <string>
#include <vector>

#include "apikeys/error.hpp"
#include "sqlite/statement.hpp"
#include "text.hpp"

namespace apikeys::detail::sqlite {
namespace {

// The migration steps (doc/sqlite-store.md, rules 19 and 20):
// (1) step `to` moves the schema from version `to - 1` to `to`;
// (2) append-only: a released step is never edited (tests/unit/sqlite_store_test.cpp pins
//     versions 1 and 2, and rule 17 compares files with them);
// (3) the key columns a step adds are those of src/record_fields.hpp, with its
//     sqlite_type (a test compares the two).

struct Migration {
  int to;
  const char* sql;
};

constexpr Migration kMigrations[] = {
    {1, R"sql(
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
)sql"},
    {2, R"sql(
CREATE TABLE apikeys_meta (
  id       INTEGER NOT NULL PRIMARY KEY CHECK (id = 1),
  revision INTEGER NOT NULL
);
INSERT INTO apikeys_meta (id, revision) VALUES (1, 0);
)sql"},
    {3, R"sql(
CREATE TABLE apikeys_changes (
  revision   INTEGER NOT NULL PRIMARY KEY,
  public_key TEXT    NOT NULL
);
)sql"},
    // Key policy: metadata, scopes, updated_at, version, rotation links; and the index
    // that list pages walk (created_at, then key_id, both descending).
    {4, R"sql(
ALTER TABLE api_keys ADD COLUMN metadata     TEXT    NOT NULL DEFAULT '';
ALTER TABLE api_keys ADD COLUMN scopes       TEXT    NOT NULL DEFAULT '';
ALTER TABLE api_keys ADD COLUMN updated_at   INTEGER NOT NULL DEFAULT 0;
ALTER TABLE api_keys ADD COLUMN version      INTEGER NOT NULL DEFAULT 1;
ALTER TABLE api_keys ADD COLUMN rotated_from TEXT;
ALTER TABLE api_keys ADD COLUMN rotated_to   TEXT;
UPDATE api_keys SET updated_at = created_at;
CREATE INDEX api_keys_account_page ON api_keys (account_id, created_at DESC, key_id DESC);
)sql"},
    // Admission: each key's lineage (NULL: its own) and rate limits, and one row of
    // credits per lineage (src/sqlite/admission.hpp; doc/sqlite-store.md, rules 28-31).
    // last_take is how take_credits()'s RETURNING reports what it took.
    {5, R"sql(
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
)sql"},
    // The audit trail (doc/sqlite-store.md, rules 32-35): one row per event, written in
    // the transaction of its change. Ids are canonical lower-case text, whose order is
    // Uuid byte order; the indexes serve an account's newest events, one key's, and
    // pruning by age.
    {6, R"sql(
CREATE TABLE audit_events (
  event_id     TEXT    NOT NULL PRIMARY KEY,
  time_ms      INTEGER NOT NULL,
  account_id   TEXT    NOT NULL,
  key_id       TEXT    NOT NULL,
  action       INTEGER NOT NULL,
  actor_type   INTEGER NOT NULL,
  actor_id     TEXT    NOT NULL,
  actor_detail TEXT    NOT NULL,
  reason       TEXT    NOT NULL,
  before_json  TEXT    NOT NULL,
  after_json   TEXT    NOT NULL
);
CREATE INDEX audit_events_account_time
  ON audit_events (account_id, time_ms DESC, event_id DESC);
CREATE INDEX audit_events_account_key_time
  ON audit_events (account_id, key_id, time_ms DESC, event_id DESC);
CREATE INDEX audit_events_time ON audit_events (time_ms);
)sql"},
    // has_credits: whether the key's lineage has a key_credits row, so that find() reads
    // a column instead of probing key_credits (doc/sqlite-store.md, rule 38). Triggers
    // keep it, whichever statement adds or removes a key or a credits row; the partial
    // index serves their lookup of a lineage's rotated keys.
    {7, R"sql(
ALTER TABLE api_keys ADD COLUMN has_credits INTEGER NOT NULL DEFAULT 0;
CREATE INDEX api_keys_lineage ON api_keys (lineage_id) WHERE lineage_id IS NOT NULL;
UPDATE api_keys SET has_credits = 1 WHERE EXISTS (SELECT 1 FROM key_credits AS c
  WHERE c.lineage_id = coalesce(api_keys.lineage_id, api_keys.key_id));
CREATE TRIGGER api_keys_credits_on_insert AFTER INSERT ON api_keys BEGIN
  UPDATE api_keys SET has_credits = EXISTS (SELECT 1 FROM key_credits AS c
    WHERE c.lineage_id = coalesce(NEW.lineage_id, NEW.key_id)) WHERE rowid = NEW.rowid;
END;
CREATE TRIGGER api_keys_credits_on_lineage AFTER UPDATE OF key_id, lineage_id ON api_keys BEGIN
  UPDATE api_keys SET has_credits = EXISTS (SELECT 1 FROM key_credits AS c
    WHERE c.lineage_id = coalesce(NEW.lineage_id, NEW.key_id)) WHERE rowid = NEW.rowid;
END;
CREATE TRIGGER key_credits_on_insert AFTER INSERT ON key_credits BEGIN
  UPDATE api_keys SET has_credits = 1
    WHERE lineage_id = NEW.lineage_id OR (lineage_id IS NULL AND key_id = NEW.lineage_id);
END;
CREATE TRIGGER key_credits_on_delete AFTER DELETE ON key_credits BEGIN
  UPDATE api_keys SET has_credits = 0
    WHERE lineage_id = OLD.lineage_id OR (lineage_id IS NULL AND key_id = OLD.lineage_id);
END;
CREATE TRIGGER key_credits_on_lineage AFTER UPDATE OF lineage_id ON key_credits BEGIN
  UPDATE api_keys SET has_credits = 0
    WHERE lineage_id = OLD.lineage_id OR (lineage_id IS NULL AND key_id = OLD.lineage_id);
  UPDATE api_keys SET has_credits = 1
    WHERE lineage_id = NEW.lineage_id OR (lineage_id IS NULL AND key_id = NEW.lineage_id);
END;
)sql"},
    // A balance's generation (CreditTake::generation), new whenever the balance is set:
    // credits given back with return_credits_checked() land only on the balance they
    // were taken from (doc/sqlite-store.md, rule 40).
    {8, R"sql(
ALTER TABLE key_credits ADD COLUMN generation INTEGER NOT NULL DEFAULT 0;
)sql"},
};

}  // namespace

const int kCurrentVersion = kMigrations[std::size(kMigrations) - 1].to;

namespace {

// The schema versions released before the marker existed (rule 17). Never raise this.
constexpr int kLastUnmarkedVersion = 2;

int user_version(SQLite::Database& db) { return db.execAndGet("PRAGMA user_version").getInt(); }

[[noreturn]] void newer_schema(int version) {
  throw Error(ErrorCode::storage,
              fmt::format("SqliteStore open failed: schema version {} is newer than this library "
                          "supports ({})",
                          version, kCurrentVersion));
}

}  // namespace

void require_apikeys_tables(SQLite::Database& db) {
  const int tables = db.execAndGet(
                           "SELECT count(*) FROM sqlite_master WHERE type = 'table'"
                           " AND name IN ('api_keys', 'apikeys_meta')")
                         .getInt();
  if (tables != 2) {
    throw Error(ErrorCode::storage,
                "SqliteStore open failed: not an apikeys database (tables missing)");
  }
}

namespace {

// Every schema object but SQLite's own (sqlite_autoindex_*, sqlite_stat* after an
// ANALYZE, ...): type, name, table and CREATE statement, in a fixed order.
std::vector<std::string> schema_of(SQLite::Database& db) {
  std::vector<std::string> out;
  SQLite::Statement q(db,
                      "SELECT type, name, tbl_name, coalesce(sql, '') FROM sqlite_master"
                      " WHERE name NOT LIKE 'sqlite\\_%' ESCAPE '\\' ORDER BY type, name");
  while (q.executeStep()) {
    for (int c = 0; c < 4; ++c) out.push_back(q.getColumn(c).getString());
  }
  return out;
}

// The schema the migration steps up to `version` create, built in a private in-memory
// database (so the steps stay the only description of each version's schema).
std::vector<std::string> schema_at(int version) {
  SQLite::Database scratch(":memory:", SQLite::OPEN_READWRITE | SQLite::OPEN_CREATE);
  for (const Migration& step : kMigrations) {
    if (step.to <= version) scratch.exec(step.sql);
  }
  return schema_of(scratch);
}

// The size of the database file on disk, as SQLite's file layer sees it. Not PRAGMA
// page_count: inside a write transaction an empty database already counts the page 1
// that the transaction would create.
std::int64_t main_file_size(SQLite::Database& db) {
  sqlite3_file* file = nullptr;
  sqlite3_int64 size = -1;
  if (sqlite3_file_control(db.getHandle(), "main", SQLITE_FCNTL_FILE_POINTER, &file) != SQLITE_OK ||
      file == nullptr || file->pMethods == nullptr ||
      file->pMethods->xFileSize(file, &size) != SQLITE_OK) {
    throw Error(ErrorCode::storage, "SqliteStore open failed: cannot read the file's size");
  }
  return size;
}

}  // namespace

namespace {

Identity identify_in_transaction(SQLite::Database& db) {
  Identity id;
  const auto app = static_cast<std::uint32_t>(db.execAndGet("PRAGMA application_id").getInt());
  id.version = user_version(db);
  if (app == static_cast<std::uint32_t>(kApplicationId)) {
    id.marked = true;
    if (id.version >= 1) {
      id.kind = FileKind::apikeys;
    } else {
      id.why = fmt::format("apikeys' application_id but user_version {}", id.version);
    }
    return id;
  }
  if (app != 0) {
    id.why = fmt::format("application_id {:#010x}, not apikeys' {:#010x}", app,
                         static_cast<std::uint32_t>(kApplicationId));
    return id;
  }
  if (main_file_size(db) == 0) {
    id.kind = FileKind::empty;
    return id;
  }
  if (id.version >= 1 && id.version <= kLastUnmarkedVersion &&
      schema_of(db) == schema_at(id.version)) {
    id.kind = FileKind::apikeys;
    return id;
  }
  id.why = fmt::format(
      "no apikeys application_id, and not the exact schema of an earlier apikeys release; "
      "user_version {}",
      id.version);
  return id;
}

}  // namespace

// Every read in one transaction: another connection's migration committing between two
// reads would otherwise show a mix of states (no marker yet, the final user_version).
Identity identify(SQLite::Database& db) {
  if (sqlite3_get_autocommit(db.getHandle()) == 0) return identify_in_transaction(db);
  SQLite::Transaction snapshot(db, SQLite::TransactionBehavior::DEFERRED);
  return identify_in_transaction(db);  // the destructor ends the read transaction
}

void require_usable(const Identity& id, const std::string& path, bool may_initialise) {
  switch (id.kind) {
    case FileKind::apikeys:
      if (id.version > kCurrentVersion) newer_schema(id.version);
      return;
    case FileKind::empty:
      if (may_initialise) return;
      throw Error(ErrorCode::storage,
                  fmt::format("SqliteStore open '{}' failed: not an apikeys database (an empty "
                              "file; only a writable open with create_if_missing initialises "
                              "one)",
                              escape_unprintable(path)));
    case FileKind::foreign: break;
  }
  throw Error(ErrorCode::storage,
              fmt::format("SqliteStore open '{}' failed: not an apikeys database ({}); left "
                          "unchanged",
                          escape_unprintable(path), id.why));
}

namespace {

// `path` as an SQLite URI that opens it read-only and immutable: no locks taken, no
// journal, -wal or -shm file looked at or created.
std::string immutable_uri(const std::string& path) {
  std::string uri = "file:";
  for (std::size_t i = 0; i < path.size(); ++i) {
    const auto c = static_cast<unsigned char>(path[i]);
    const bool plain = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
                       c == '-' || c == '.' || c == '_' || c == '~' ||
                       (c == '/' && i != 1);  // "file://" would name a host
    if (plain) {
      uri.push_back(static_cast<char>(c));
    } else {
      uri += fmt::format("%{:02X}", c);
    }
  }
  return uri + "?immutable=1";
}

// True when the file's header says WAL mode (bytes 18 and 19 are 2).
bool wal_header(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  char header[20] = {};
  in.read(header, sizeof header);
  return in.gcount() == sizeof header && header[18] == 2 && header[19] == 2;
}

}  // namespace

// Identifies an existing file without writing to it or beside it (rule 15):
// (1) a WAL-mode file lacking its -wal or -shm is read as immutable: an ordinary
//     connection would create them beside someone else's database, and a WAL file
//     without a -wal holds every committed change in itself;
// (2) anything else is read on an ordinary read-only connection, in one read
//     transaction, whose locks keep out half-written commits and which creates nothing
//     beside a rollback journal;
// (3) a stale view only decides whether to go on: whatever writes identifies the file
//     again, under the write lock (migrate()).
Identity identify_read_only(const std::string& path, const SqliteStoreOptions& options) {
  const auto immutable = [&] {
    SQLite::Database probe(immutable_uri(path),
                           SQLite::OPEN_READONLY | SQLite::OPEN_URI | SQLite::OPEN_NOMUTEX);
    return identify(probe);
  };
  try {
    // With a -wal but no -shm (files copied without it), an ordinary connection would
    // create the -shm: read the main file alone then too. What a WAL-mode file of ours
    // needs to be recognised, its marker, is in the main file from its first commit.
    std::error_code ec;
    const bool no_wal = !std::filesystem::exists(path + "-wal", ec) && !ec;
    const bool no_shm = !std::filesystem::exists(path + "-shm", ec) && !ec;
    if (wal_header(path) && (no_wal || no_shm)) return immutable();
    try {
      SQLite::Database probe = open_connection(path, options, Role::reader, true);
      return identify(probe);
    } catch (const SQLite::Exception& e) {
      // A hot journal: an interrupted transaction that only a writable connection may
      // roll back, a write not ours to make to a file we have not identified. Unless the
      // file, as it lies, is marked as ours (our first transaction, interrupted).
      if (e.getExtendedErrorCode() != SQLITE_READONLY_ROLLBACK) throw;
      Identity id;
      try {
        id = immutable();
      } catch (const SQLite::Exception&) {
      }
      if (id.marked) return id;
      throw Error(ErrorCode::storage,
                  fmt::format("SqliteStore open '{}' failed: the file has a hot journal (an "
                              "interrupted transaction) that only a writable connection can "
                              "roll back; open it once with the program that wrote it",
                              escape_unprintable(path)));
    }
  } catch (const SQLite::Exception& e) {
    if (e.getErrorCode() != SQLITE_NOTADB) throw;
    throw Error(ErrorCode::storage,
                fmt::format("SqliteStore open '{}' failed: not an apikeys database (not an "
                            "SQLite database file); left unchanged",
                            escape_unprintable(path)));
  }
}

// Brings the schema to kCurrentVersion and marks the file as ours (rules 15, 16, 20):
// (1) one step per IMMEDIATE transaction, with its user_version bump and, in the
//     first, the marker;
// (2) each transaction identifies the file again before it writes: another process
//     creating, migrating or replacing the file meanwhile is seen, and a refused
//     file's transaction rolls back having written nothing.
void migrate(SQLite::Database& db, const std::string& path, bool may_initialise) {
  for (;;) {
    SQLite::Transaction tx(db, SQLite::TransactionBehavior::IMMEDIATE);
    const Identity id = identify(db);
    require_usable(id, path, may_initialise);
    if (id.marked && id.version == kCurrentVersion) return;  // nothing to do; tx rolls back
    for (const Migration& step : kMigrations) {
      if (step.to != id.version + 1) continue;
      db.exec(step.sql);
      db.exec(fmt::format("PRAGMA user_version = {}", step.to));
      break;
    }
    if (!id.marked) db.exec(fmt::format("PRAGMA application_id = {}", kApplicationId));
    tx.commit();
  }
}

}  // namespace apikeys::detail::sqlite
