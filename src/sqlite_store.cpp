// SqliteStore: one writer connection under a mutex, a lazily grown pool of query-only
// reader connections, prepared statements reused per connection, and a schema kept in
// step by forward migrations keyed on PRAGMA user_version. A file is identified as ours
// (PRAGMA application_id, or the exact schema of a release from before that marker)
// before anything is written to it.
#include "apikeys/sqlite_store.hpp"

#include <sqlite3.h>

#include <SQLiteCpp/Column.h>
#include <SQLiteCpp/Database.h>
#include <SQLiteCpp/Exception.h>
#include <SQLiteCpp/Statement.h>
#include <SQLiteCpp/Transaction.h>
#include <fmt/format.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstring>
#include <iterator>
#include <type_traits>
#include <cstdint>
#include <exception>
#include <filesystem>
#include <fstream>
#include <limits>
#include <map>
#include <memory>
#include <mutex>
#include <random>
#include <string>
#include <string_view>
#include <thread>
#include <utility>
#include <vector>

#include "apikeys/error.hpp"
#include "decoy_reads.hpp"

namespace apikeys {
namespace {

// ---------------------------------------------------------------------------------
// Schema. Each step moves the database from version `to - 1` to `to`, in its own
// IMMEDIATE transaction together with the user_version bump. Steps are append-only:
// a released step is never edited (tests/sqlite_store_test.cpp pins version 1).

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
};

constexpr int kCurrentVersion = kMigrations[std::size(kMigrations) - 1].to;

// The marker in the header of every file this library initialises (PRAGMA
// application_id, bytes 68-71 of the file): "apik" in ASCII. Never change it: it is how
// the files of every later version are told from other applications' databases.
constexpr std::int32_t kApplicationId = 0x6170696B;

// The schema versions released before the marker existed. A file at one of these with
// application_id 0 is ours only if its schema is exactly what those steps created; it
// gets the marker in its next migration transaction. Never raise this.
constexpr int kLastUnmarkedVersion = 2;

// Idle reader connections kept open; more may exist while checked out.
constexpr std::size_t kMaxIdleReaders = 16;

// KeyInfo columns, in the order read_info() expects.
#define APIKEYS_INFO_COLUMNS \
  "key_id, account_id, public_key, title, description, status, created_at, expires_at, last_used_at"

// find() reads one row whether or not the key exists (the timing oracle of
// doc/failure-modes.md): the first row at or after the rowid of the row whose
// public_key is ?1 (that row itself) or, failing that, at or after the decoy rowid ?2
// (gaps and deleted rowids lead to the next row), with a first column saying which. A miss then costs what a hit costs
// (index search, one table search, the same columns decoded) instead of stopping after
// the index. Only a miss whose ?2 is past the table's end gets no row (see find()).
// The public_key column is only compared, not read back: on a hit it equals the
// argument byte for byte (a TEXT column under BINARY collation).
constexpr const char* kFindSql =
    "SELECT k.public_key = ?1, k.rowid, digest, pepper_id, key_id, account_id, title,"
    " description, status, created_at, expires_at, last_used_at FROM api_keys AS k"
    " WHERE k.rowid >= coalesce((SELECT rowid FROM api_keys WHERE public_key = ?1), ?2)"
    " ORDER BY k.rowid LIMIT 1";
constexpr const char* kMaxRowidSql = "SELECT coalesce(max(rowid), 0) FROM api_keys";
constexpr const char* kListSql = "SELECT " APIKEYS_INFO_COLUMNS
                                 " FROM api_keys WHERE account_id = ?1"
                                 " ORDER BY created_at DESC, rowid DESC";
constexpr const char* kRevisionSql = "SELECT revision FROM apikeys_meta WHERE id = 1";
constexpr const char* kInsertSql =
    "INSERT INTO api_keys (key_id, account_id, public_key, digest, pepper_id, title,"
    " description, status, created_at, expires_at, last_used_at)"
    " VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)";
constexpr const char* kSetStatusSql =
    "UPDATE api_keys SET status = ?1 WHERE key_id = ?2 AND account_id = ?3"
    " RETURNING " APIKEYS_INFO_COLUMNS;
constexpr const char* kRemoveSql =
    "DELETE FROM api_keys WHERE key_id = ?1 AND account_id = ?2 RETURNING " APIKEYS_INFO_COLUMNS;
constexpr const char* kBumpRevisionSql =
    "UPDATE apikeys_meta SET revision = revision + 1 WHERE id = 1";
// The change log (doc/revocation.md): each revision step names the public key it
// revoked or deleted, in the transaction that made it; the oldest rows are pruned.
// REPLACE: a revision restored from a backup may meet a row it left behind.
constexpr const char* kLogChangeSql =
    "INSERT OR REPLACE INTO apikeys_changes (revision, public_key)"
    " SELECT revision, ?1 FROM apikeys_meta WHERE id = 1";
constexpr const char* kPruneChangesSql =
    "DELETE FROM apikeys_changes WHERE revision <= (SELECT revision FROM apikeys_meta"
    " WHERE id = 1) - ?1";
constexpr const char* kChangesSql =
    "SELECT revision, public_key FROM apikeys_changes WHERE revision > ?1 AND revision <= ?2"
    " ORDER BY revision";
// max(coalesce(x, ?1), ?1) keeps the later time and treats "never used" as older than
// any time, including one before 1970.
constexpr const char* kLastUseSql =
    "UPDATE api_keys SET last_used_at = max(coalesce(last_used_at, ?1), ?1) WHERE key_id = ?2";

#undef APIKEYS_INFO_COLUMNS

// ---------------------------------------------------------------------------------
// Errors. SQLite's messages name tables and columns, never bound values, so they carry
// no digest, secret or pepper.

Error translate(std::string_view op, const SQLite::Exception& e) {
  const int code = e.getErrorCode();
  const int extended = e.getExtendedErrorCode();
  ErrorCode out = ErrorCode::storage;
  if (code >= 0) {
    switch (code & 0xff) {
      case SQLITE_BUSY:
      case SQLITE_LOCKED:
        out = ErrorCode::busy;
        break;
      case SQLITE_CONSTRAINT:
        if (extended == SQLITE_CONSTRAINT_UNIQUE || extended == SQLITE_CONSTRAINT_PRIMARYKEY) {
          out = ErrorCode::already_exists;
        }
        break;
      default:
        break;
    }
  }
  return Error(out, fmt::format("SqliteStore {} failed: {}", op, e.what()));
}

// Runs `f`, turning every failure into apikeys::Error at the library boundary.
template <typename F>
auto translated(std::string_view op, F&& f) -> decltype(f()) {
  try {
    return f();
  } catch (const Error&) {
    throw;
  } catch (const SQLite::Exception& e) {
    throw translate(op, e);
  } catch (const std::exception& e) {
    throw Error(ErrorCode::storage, fmt::format("SqliteStore {} failed: {}", op, e.what()));
  }
}

[[noreturn]] void corrupt(const char* op, const char* what) {
  throw Error(ErrorCode::storage, fmt::format("SqliteStore {} failed: corrupt record: {}", op, what));
}

// ---------------------------------------------------------------------------------
// Statements are reused; every use ends with reset (which also ends a reader's implicit
// read transaction, so the next read sees fresh data) and cleared bindings (no pointer
// into a caller's buffer outlives the call).
class StatementUse {
 public:
  explicit StatementUse(SQLite::Statement& s) noexcept : s_(s) {}
  ~StatementUse() {
    s_.tryReset();
    try {
      s_.clearBindings();
    } catch (...) {  // Cannot fail on a valid statement; a destructor must not throw.
    }
  }
  StatementUse(const StatementUse&) = delete;
  StatementUse& operator=(const StatementUse&) = delete;

 private:
  SQLite::Statement& s_;
};

// Column readers over the raw statement. The read paths use sqlite3_column_* directly:
// SQLiteCpp's Column objects copy a shared_ptr each, and getString() goes through a
// temporary; on the cold validate path those were a tenth of the time.
std::string_view read_text_view(sqlite3_stmt* s, int i, const char* op, const char* what) {
  if (sqlite3_column_type(s, i) != SQLITE_TEXT) corrupt(op, what);
  const auto* p = reinterpret_cast<const char*>(sqlite3_column_text(s, i));
  const int n = sqlite3_column_bytes(s, i);
  if (p == nullptr) {
    if (n == 0) return {};
    throw Error(ErrorCode::storage, fmt::format("SqliteStore {} failed: out of memory", op));
  }
  return {p, static_cast<std::size_t>(n)};
}

Uuid read_uuid(sqlite3_stmt* s, int i, const char* op, const char* what) {
  std::optional<Uuid> id = Uuid::parse(read_text_view(s, i, op, what));
  if (!id) corrupt(op, what);
  return *id;
}

std::int64_t read_int(sqlite3_stmt* s, int i, const char* op, const char* what) {
  if (sqlite3_column_type(s, i) != SQLITE_INTEGER) corrupt(op, what);
  return sqlite3_column_int64(s, i);
}

std::optional<TimePoint> read_optional_time(sqlite3_stmt* s, int i, const char* op,
                                            const char* what) {
  if (sqlite3_column_type(s, i) == SQLITE_NULL) return std::nullopt;
  return from_unix_millis(read_int(s, i, op, what));
}

// The KeyInfo columns from `first` on, in APIKEYS_INFO_COLUMNS order; public_key is
// read only when `public_key` is null (find() passes the key it searched for).
// REQUIRES: `s` is on a row.
KeyInfo read_info(sqlite3_stmt* s, const char* op, int first = 0,
                  const std::string_view* public_key = nullptr) {
  KeyInfo info;
  int c = first;
  info.key_id = read_uuid(s, c++, op, "key_id is not a UUID");
  info.account_id = read_uuid(s, c++, op, "account_id is not a UUID");
  if (public_key != nullptr) {
    info.public_key.assign(*public_key);
  } else {
    info.public_key.assign(read_text_view(s, c++, op, "public_key is not text"));
  }
  info.title.assign(read_text_view(s, c++, op, "title is not text"));
  info.description.assign(read_text_view(s, c++, op, "description is not text"));
  const std::int64_t status = read_int(s, c++, op, "status is not an integer");
  if (status != static_cast<std::int64_t>(KeyStatus::active) &&
      status != static_cast<std::int64_t>(KeyStatus::revoked)) {
    corrupt(op, "unknown status");
  }
  info.status = static_cast<KeyStatus>(status);
  info.created_at = from_unix_millis(read_int(s, c++, op, "created_at is not an integer"));
  info.expires_at = read_optional_time(s, c++, op, "expires_at is not an integer");
  info.last_used_at = read_optional_time(s, c, op, "last_used_at is not an integer");
  return info;
}

Digest read_digest(sqlite3_stmt* s, int column, const char* op) {
  Digest d;
  if (sqlite3_column_type(s, column) != SQLITE_BLOB ||
      sqlite3_column_bytes(s, column) != static_cast<int>(d.bytes.size())) {
    corrupt(op, "digest is not 32 bytes");
  }
  const void* bytes = sqlite3_column_blob(s, column);
  if (bytes == nullptr) corrupt(op, "digest is not 32 bytes");
  std::memcpy(d.bytes.data(), bytes, d.bytes.size());
  const std::int64_t pepper = read_int(s, column + 1, op, "pepper_id is not an integer");
  if (pepper < 0 || pepper > std::numeric_limits<std::uint32_t>::max()) {
    corrupt(op, "pepper_id out of range");
  }
  d.pepper_id = static_cast<std::uint32_t>(pepper);
  return d;
}

// A prepared statement used through the raw C API (the statements whose rows are read
// with the readers above). Finalized before its connection closes: declare it after
// the SQLite::Database it was prepared on.
class RawStatement {
 public:
  RawStatement(SQLite::Database& db, const char* sql) : db_(db.getHandle()) {
    const int rc = sqlite3_prepare_v3(db_, sql, -1, SQLITE_PREPARE_PERSISTENT, &stmt_, nullptr);
    if (rc != SQLITE_OK) {
      sqlite3_finalize(stmt_);
      throw SQLite::Exception(db_, rc);
    }
  }
  ~RawStatement() { sqlite3_finalize(stmt_); }
  RawStatement(const RawStatement&) = delete;
  RawStatement& operator=(const RawStatement&) = delete;

  [[nodiscard]] sqlite3_stmt* get() const noexcept { return stmt_; }

  // Binds without copying: the bytes must outlive the step (see RawUse).
  void bind(int index, std::string_view text) {
    if (text.size() > static_cast<std::size_t>(std::numeric_limits<int>::max())) {
      throw Error(ErrorCode::invalid_argument, "SqliteStore: text parameter too long");
    }
    check(sqlite3_bind_text(stmt_, index, text.data(), static_cast<int>(text.size()),
                            SQLITE_STATIC));
  }
  void bind(int index, std::int64_t value) { check(sqlite3_bind_int64(stmt_, index, value)); }

  // True on a row, false when done; throws SQLite::Exception on an error.
  bool step() {
    const int rc = sqlite3_step(stmt_);
    if (rc == SQLITE_ROW) return true;
    if (rc == SQLITE_DONE) return false;
    throw SQLite::Exception(db_, rc);
  }

 private:
  void check(int rc) const {
    if (rc != SQLITE_OK) throw SQLite::Exception(db_, rc);
  }

  sqlite3* db_;
  sqlite3_stmt* stmt_ = nullptr;
};

// Every use of a RawStatement ends with reset (which also ends a reader's implicit read
// transaction, so the next read sees fresh data) and cleared bindings (no pointer into
// a caller's buffer outlives the call).
class RawUse {
 public:
  explicit RawUse(const RawStatement& s) noexcept : s_(s.get()) {}
  ~RawUse() {
    sqlite3_reset(s_);
    sqlite3_clear_bindings(s_);
  }
  RawUse(const RawUse&) = delete;
  RawUse& operator=(const RawUse&) = delete;

 private:
  sqlite3_stmt* s_;
};

// ---------------------------------------------------------------------------------
// Connections.

enum class Role { writer, reader };

// Only the constructor passes `create`, and only for a missing file it may initialise:
// a connection reopened later must not leave an empty file where one was deleted.
SQLite::Database open_connection(const std::string& path, const SqliteStoreOptions& o, Role role,
                                 bool read_only, bool create = false) {
  int flags = SQLite::OPEN_NOMUTEX;  // Each connection is used by one thread at a time.
  if (read_only) {
    flags |= SQLite::OPEN_READONLY;
  } else {
    flags |= SQLite::OPEN_READWRITE;
    if (create) flags |= SQLite::OPEN_CREATE;
  }
  const auto timeout = std::clamp<std::chrono::milliseconds::rep>(
      o.busy_timeout.count(), 0, std::numeric_limits<int>::max());
  SQLite::Database db(path, flags, static_cast<int>(timeout));

  const auto cache_kib = std::min<std::size_t>(o.cache_size_kib, 1u << 30);
  const auto mmap = std::min<std::size_t>(o.mmap_size, std::numeric_limits<std::int64_t>::max());
  // Negative cache_size is in KiB. Only integers are formatted into these pragmas.
  db.exec(fmt::format("PRAGMA cache_size = -{}; PRAGMA mmap_size = {}; PRAGMA synchronous = {};",
                      cache_kib, mmap, o.durable ? "FULL" : "NORMAL"));
  if (role == Role::reader) db.exec("PRAGMA query_only = 1");
  return db;
}

int user_version(SQLite::Database& db) { return db.execAndGet("PRAGMA user_version").getInt(); }

[[noreturn]] void newer_schema(int version) {
  throw Error(ErrorCode::storage,
              fmt::format("SqliteStore open failed: schema version {} is newer than this library "
                          "supports ({})",
                          version, kCurrentVersion));
}

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

// ---------------------------------------------------------------------------------
// Identification. Everything here only reads: a file is identified (on a read-only
// connection, and again under the write lock) before the first write to it, so another
// application's database is refused without a byte of it changed.

enum class FileKind {
  empty,    // a 0-byte file: ours to initialise, if the caller allows
  apikeys,  // marked as ours, or the exact schema of a release from before the marker
  foreign,  // anything else: never written to
};

struct Identity {
  FileKind kind = FileKind::foreign;
  int version = 0;      // PRAGMA user_version
  bool marked = false;  // PRAGMA application_id is kApplicationId
  std::string why;      // for `foreign`: what gave it away (header numbers only)
};

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
  if (sqlite3_file_control(db.getHandle(), "main", SQLITE_FCNTL_FILE_POINTER, &file) !=
          SQLITE_OK ||
      file == nullptr || file->pMethods == nullptr ||
      file->pMethods->xFileSize(file, &size) != SQLITE_OK) {
    throw Error(ErrorCode::storage, "SqliteStore open failed: cannot read the file's size");
  }
  return size;
}

Identity identify(SQLite::Database& db) {
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

// Throws Error(storage) unless `id` is a file this store may use, and (when
// `may_initialise`) an empty one it may initialise.
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
                              path));
    case FileKind::foreign:
      break;
  }
  throw Error(ErrorCode::storage,
              fmt::format("SqliteStore open '{}' failed: not an apikeys database ({}); left "
                          "unchanged",
                          path, id.why));
}

// `path` as an SQLite URI that opens it read-only and immutable: no locks taken, no
// journal, -wal or -shm file looked at or created.
std::string immutable_uri(const std::string& path) {
  std::string uri = "file:";
  for (std::size_t i = 0; i < path.size(); ++i) {
    const auto c = static_cast<unsigned char>(path[i]);
    const bool plain = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
                       (c >= '0' && c <= '9') || c == '-' || c == '.' || c == '_' ||
                       c == '~' || (c == '/' && i != 1);  // "file://" would name a host
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

// Identifies an existing file without writing to it or beside it. A WAL file without a
// -wal file holds every committed change in itself (and one without a -shm is read the
// same way, so that none is created beside it); it is read as immutable, because
// an ordinary connection would create -wal and -shm files next to someone else's
// database (owned by whoever runs us, they could lock its owner out). Anything else is
// read on an ordinary read-only connection, whose locks keep out half-written commits
// and which creates nothing beside a rollback-journal file. A view that is stale
// (another process writing meanwhile) only decides whether to go on: whatever writes
// identifies the file again, on its own connection, under the write lock.
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
                              path));
    }
  } catch (const SQLite::Exception& e) {
    if (e.getErrorCode() != SQLITE_NOTADB) throw;
    throw Error(ErrorCode::storage,
                fmt::format("SqliteStore open '{}' failed: not an apikeys database (not an "
                            "SQLite database file); left unchanged",
                            path));
  }
}

// Brings the schema to kCurrentVersion and marks the file as ours, one migration step per
// IMMEDIATE transaction together with its user_version bump (and, in the first, the
// marker). Each transaction identifies the file again under the write lock before it
// writes, so another process creating, migrating or replacing the file meanwhile is seen;
// a refused file's transaction rolls back having written nothing.
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

struct Reader {
  Reader(const std::string& path, const SqliteStoreOptions& o, bool read_only)
      : db(open_connection(path, o, Role::reader, read_only)),
        find(db, kFindSql),
        list(db, kListSql),
        revision(db, kRevisionSql),
        last_rowid(db, kMaxRowidSql),
        begin(db, "BEGIN"),
        end(db, "COMMIT"),
        rng(random_seed()) {}

  // True while this connection holds a read transaction open across calls.
  [[nodiscard]] bool in_snapshot() const noexcept {
    return sqlite3_get_autocommit(db.getHandle()) == 0;
  }

  // Ends the read transaction, if any: the next read takes a new snapshot. Never
  // throws; a failed COMMIT (not expected for a read) falls back to ROLLBACK. Not const:
  // it changes the connection's state, which the compiler cannot see through handles.
  // NOLINTNEXTLINE(readability-make-member-function-const)
  void end_snapshot() noexcept {
    if (!in_snapshot()) return;
    const int rc = sqlite3_step(end.get());
    sqlite3_reset(end.get());
    if (rc != SQLITE_DONE) sqlite3_exec(db.getHandle(), "ROLLBACK", nullptr, nullptr, nullptr);
  }

  // find()'s read transaction: kept across calls while it is younger than `max_age`
  // and no write went through this store since it began (`epoch`); else a new one.
  void use_snapshot(std::chrono::steady_clock::duration max_age, std::uint64_t epoch) {
    if (max_age.count() <= 0) {
      end_snapshot();  // a transaction per statement
      return;
    }
    const auto now = std::chrono::steady_clock::now();
    if (in_snapshot()) {
      if (epoch == snapshot_epoch && now - snapshot_began < max_age) return;
      end_snapshot();
    }
    RawUse use(begin);
    (void)begin.step();
    snapshot_began = now;
    snapshot_epoch = epoch;
  }

  // The table's largest rowid now, 0 when it is empty.
  std::int64_t read_max_rowid() {
    RawUse use(last_rowid);
    return last_rowid.step() ? sqlite3_column_int64(last_rowid.get(), 0) : 0;
  }

  // A rowid for find()'s decoy read: uniform over 1..bound (the largest rowid the
  // store has seen). The query takes the next existing row from there.
  std::int64_t decoy_rowid(std::int64_t bound) noexcept {
    rng ^= rng << 13;
    rng ^= rng >> 7;
    rng ^= rng << 17;
    return bound <= 1 ? 1 : 1 + static_cast<std::int64_t>(rng % static_cast<std::uint64_t>(bound));
  }

  SQLite::Database db;  // Declared first: statements are finalized before it closes.
  RawStatement find;
  RawStatement list;
  SQLite::Statement revision;
  RawStatement last_rowid;
  RawStatement begin;
  RawStatement end;
  std::uint64_t rng;  // xorshift64 state: never 0.
  std::chrono::steady_clock::time_point snapshot_began;
  std::uint64_t snapshot_epoch = 0;

 private:
  // Each reader its own sequence, so that decoy rows do not repeat across readers or runs.
  static std::uint64_t random_seed() {
    std::random_device device;
    const std::uint64_t seed = (std::uint64_t{device()} << 32) ^ device();
    return seed != 0 ? seed : 0x9e3779b97f4a7c15ULL;
  }
};

struct Writer {
  explicit Writer(SQLite::Database&& database)
      : db(std::move(database)),
        insert(db, kInsertSql),
        set_status(db, kSetStatusSql),
        remove(db, kRemoveSql),
        bump_revision(db, kBumpRevisionSql),
        log_change(db, kLogChangeSql),
        prune_changes(db, kPruneChangesSql),
        last_use(db, kLastUseSql) {}

  SQLite::Database db;
  SQLite::Statement insert;
  RawStatement set_status;
  RawStatement remove;
  SQLite::Statement bump_revision;
  SQLite::Statement log_change;
  SQLite::Statement prune_changes;
  SQLite::Statement last_use;
};

// One write counter per database file in this process, shared by every SqliteStore
// open on it (keyed by the file's canonical path; entries die with their last store).
std::shared_ptr<std::atomic<std::uint64_t>> file_epoch(const std::string& path) {
  static std::mutex mu;
  static std::map<std::string, std::weak_ptr<std::atomic<std::uint64_t>>> files;
  std::error_code ec;
  std::string key = std::filesystem::canonical(path, ec).string();
  if (ec) key = path;
  std::lock_guard lock(mu);
  for (auto it = files.begin(); it != files.end();) {
    it = it->second.expired() ? files.erase(it) : std::next(it);
  }
  auto& slot = files[key];
  auto epoch = slot.lock();
  if (!epoch) {
    epoch = std::make_shared<std::atomic<std::uint64_t>>(0);
    slot = epoch;
  }
  return epoch;
}

}  // namespace

struct SqliteStore::Impl {
  Impl(std::string p, const SqliteStoreOptions& o)
      : path(std::move(p)),
        options(o),
        snapshot_max_age(snapshot_age(o.read_snapshot_max_age)) {
    // ~Lease puts readers back without allocating (see there).
    idle.reserve(kMaxIdleReaders);
  }

  // The option in the clock's unit, clamped (a huge value must not overflow into "off").
  static std::chrono::steady_clock::duration snapshot_age(std::chrono::microseconds age) {
    using steady = std::chrono::steady_clock;
    const auto most = std::chrono::duration_cast<std::chrono::microseconds>(steady::duration::max());
    return std::chrono::duration_cast<steady::duration>(
        std::clamp(age, std::chrono::microseconds::zero(), most));
  }

  ~Impl() {
    {
      std::lock_guard lock(janitor_mu);
      stopping = true;
    }
    janitor_cv.notify_all();
    if (janitor.joinable()) janitor.join();
  }
  Impl(const Impl&) = delete;
  Impl& operator=(const Impl&) = delete;

  const std::string path;
  const SqliteStoreOptions options;
  const std::chrono::steady_clock::duration snapshot_max_age;
  bool read_only = false;  // The option, or the file turned out not to be writable.

  // Counts the writes committed through every SqliteStore of this process on this file,
  // and the revision changes they have seen (another process's revokes): a find()
  // snapshot older than the last one is not reused. Shared by file (see file_epoch()),
  // so a write through one object shows at once through another.
  std::shared_ptr<std::atomic<std::uint64_t>> write_epoch =
      std::make_shared<std::atomic<std::uint64_t>>(0);
  std::atomic<std::uint64_t> last_revision{0};
  std::atomic<bool> revision_known{false};

  // Ends the snapshots of readers left idle (a read transaction held open
  // forever pins the WAL, which then grows with every write of every process). Runs
  // only while some idle reader may hold one; wakes every kJanitorPeriod meanwhile.
  static constexpr std::chrono::milliseconds kJanitorPeriod{100};
  std::mutex janitor_mu;
  std::condition_variable janitor_cv;
  bool stopping = false;                // guarded by janitor_mu
  std::atomic<bool> janitor_armed{false};
  std::thread janitor;                  // started by the constructor when snapshots are kept

  void start_janitor() {
    if (snapshot_max_age.count() > 0) janitor = std::thread([this] { run_janitor(); });
  }

  // Called when a reader with an open snapshot goes back to the pool.
  void arm_janitor() {
    if (janitor_armed.load(std::memory_order_relaxed) || !janitor.joinable()) return;
    {
      std::lock_guard lock(janitor_mu);
      janitor_armed.store(true, std::memory_order_relaxed);
    }
    janitor_cv.notify_one();
  }

  void run_janitor() {
    std::unique_lock lock(janitor_mu);
    while (!stopping) {
      janitor_cv.wait(lock, [this] { return stopping || janitor_armed.load(); });
      if (janitor_cv.wait_for(lock, kJanitorPeriod, [this] { return stopping; })) break;
      janitor_armed.store(false);
      lock.unlock();
      bool young_left = false;
      {
        std::lock_guard pool(pool_mu);
        const auto now = std::chrono::steady_clock::now();
        for (const auto& r : idle) {
          if (!r->in_snapshot()) continue;
          if (now - r->snapshot_began >= snapshot_max_age) {
            r->end_snapshot();
          } else {
            young_left = true;
          }
        }
      }
      if (young_left) janitor_armed.store(true);
      lock.lock();
    }
  }

  // After a commit, or a revision change seen: no find() reuses an older snapshot.
  void bump_epoch() noexcept { write_epoch->fetch_add(1, std::memory_order_release); }

  std::mutex writer_mu;
  std::unique_ptr<Writer> writer;  // Guarded by writer_mu; null when read_only.

  std::mutex pool_mu;
  // Guarded by pool_mu. Never holds more than kMaxIdleReaders, its reserved capacity.
  std::vector<std::unique_ptr<Reader>> idle;

  // The largest rowid this store has seen (its inserts, a reader's open, a hit): find()
  // draws decoy rowids below it. Lowered when a miss finds it past the table's end.
  std::atomic<std::int64_t> max_rowid{0};

  void note_rowid(std::int64_t rowid) noexcept {
    std::int64_t seen = max_rowid.load(std::memory_order_relaxed);
    while (seen < rowid &&
           !max_rowid.compare_exchange_weak(seen, rowid, std::memory_order_relaxed)) {
    }
  }

  // A reader checked out of the pool for the duration of one call.
  class Lease {
   public:
    explicit Lease(Impl& impl) : impl_(impl) {
      {
        std::lock_guard lock(impl_.pool_mu);
        if (!impl_.idle.empty()) {
          reader_ = std::move(impl_.idle.back());
          impl_.idle.pop_back();
        }
      }
      // Opening takes file I/O: never under the pool mutex.
      if (!reader_) {
        reader_ = std::make_unique<Reader>(impl_.path, impl_.options, impl_.read_only);
        impl_.note_rowid(reader_->read_max_rowid());
      }
    }
    ~Lease() {
      // A call that failed may have left its snapshot mid-way: never reuse it.
      if (std::uncaught_exceptions() > exceptions_) reader_->end_snapshot();
      std::unique_ptr<Reader> surplus;
      const bool open = reader_->in_snapshot();
      {
        std::lock_guard lock(impl_.pool_mu);
        // Within the capacity reserved up front, so push_back cannot allocate: a
        // bad_alloc here, in a destructor (noexcept), would be std::terminate.
        if (impl_.idle.size() < kMaxIdleReaders) {
          impl_.idle.push_back(std::move(reader_));
        } else {
          surplus = std::move(reader_);
        }
      }
      if (open && !surplus) impl_.arm_janitor();
      // surplus (if any) closes here, outside the mutex.
    }
    Lease(const Lease&) = delete;
    Lease& operator=(const Lease&) = delete;

    Reader* operator->() const noexcept { return reader_.get(); }

   private:
    Impl& impl_;
    const int exceptions_ = std::uncaught_exceptions();
    std::unique_ptr<Reader> reader_;
  };

  // Runs `f(Writer&)` inside one BEGIN IMMEDIATE transaction under writer_mu.
  template <typename F>
  auto write(const char* op, F&& f) -> decltype(f(std::declval<Writer&>())) {
    if (read_only) {
      throw Error(ErrorCode::storage,
                  fmt::format("SqliteStore {} failed: the store is read-only", op));
    }
    return translated(op, [&]() -> decltype(f(std::declval<Writer&>())) {
      std::lock_guard lock(writer_mu);
      if (!writer) {
        writer = std::make_unique<Writer>(open_connection(path, options, Role::writer, false));
      }
      try {
        SQLite::Transaction tx(writer->db, SQLite::TransactionBehavior::IMMEDIATE);
        if constexpr (std::is_void_v<decltype(f(*writer))>) {
          f(*writer);
          tx.commit();
          bump_epoch();
        } else {
          auto result = f(*writer);
          tx.commit();
          bump_epoch();
          return result;
        }
      } catch (...) {
        // Transaction's destructor rolled back; if even that failed, the connection is
        // stuck inside a transaction: drop it and reopen on the next write.
        if (sqlite3_get_autocommit(writer->db.getHandle()) == 0) writer.reset();
        throw;
      }
    });
  }
};

SqliteStore::SqliteStore(const std::string& path, SqliteStoreOptions options)
    : impl_(std::make_unique<Impl>(path, options)) {
  // ":memory:" and "" give every connection its own private database: the readers
  // would never see the writer's rows.
  if (path.empty() || path == ":memory:") {
    throw Error(ErrorCode::storage,
                "SqliteStore open failed: in-memory and temporary databases are not supported "
                "(use MemoryStore)");
  }
  // SQLite's own errors name the file; it is not secret and operators need it.
  translated(fmt::format("open '{}'", path), [&] {
    Impl& impl = *impl_;
    const bool may_initialise = options.create_if_missing && !options.read_only;
    // Identify the file on a read-only connection before anything may write to it (not
    // even the switch to WAL): another application's database is refused unchanged.
    std::error_code ec;
    const bool missing =
        std::filesystem::status(path, ec).type() == std::filesystem::file_type::not_found;
    if (!missing) {
      require_usable(identify_read_only(path, options), path, may_initialise);
    } else if (!may_initialise) {
      throw Error(ErrorCode::storage,
                  fmt::format("SqliteStore open '{}' failed: no such file (a read-only open, or "
                              "one with create_if_missing off, creates none)",
                              path));
    }
    if (!options.read_only) {
      SQLite::Database db = open_connection(path, options, Role::writer, false, missing);
      if (sqlite3_db_readonly(db.getHandle(), "main") == 1) {
        impl.read_only = true;  // A write-protected file: serve reads only.
      } else {
        // Again on this connection, which sees the file as it is now. A new file gets its
        // schema and marker in one transaction before it turns to WAL, so an interrupted
        // first open leaves an empty file or a marked database.
        const Identity live = identify(db);
        require_usable(live, path, may_initialise);
        if (!live.marked || live.version != kCurrentVersion) migrate(db, path, may_initialise);
        const std::string mode = db.execAndGet("PRAGMA journal_mode = WAL").getString();
        if (mode != "wal") {
          throw Error(ErrorCode::storage,
                      fmt::format("SqliteStore open failed: cannot enable WAL (journal_mode "
                                  "is {})",
                                  mode));
        }
        require_apikeys_tables(db);
        impl.writer = std::make_unique<Writer>(std::move(db));
      }
    } else {
      impl.read_only = true;
    }
    if (impl.read_only) {
      // No writes at all: check the schema on a reader and keep it in the pool.
      auto reader = std::make_unique<Reader>(impl.path, impl.options, true);
      const Identity now = identify(reader->db);
      require_usable(now, path, false);
      if (now.version < kCurrentVersion) {
        throw Error(ErrorCode::storage,
                    fmt::format("SqliteStore open failed: schema version {} is older than this "
                                "library's ({}) and the store is read-only; open it read-write "
                                "once to migrate",
                                now.version, kCurrentVersion));
      }
      require_apikeys_tables(reader->db);
      impl.idle.push_back(std::move(reader));
    }
  });
  impl_->write_epoch = file_epoch(path);
  impl_->start_janitor();
}

SqliteStore::~SqliteStore() = default;

int SqliteStore::schema_version() noexcept { return kCurrentVersion; }

std::int32_t SqliteStore::application_id() noexcept { return kApplicationId; }

void SqliteStore::insert(const KeyRecord& record) {
  const KeyInfo& info = record.info;
  const std::string key_id = info.key_id.to_string();
  const std::string account_id = info.account_id.to_string();
  impl_->write("insert", [&](Writer& w) {
    SQLite::Statement& s = w.insert;
    StatementUse use(s);
    s.bindNoCopy(1, key_id);
    s.bindNoCopy(2, account_id);
    s.bindNoCopy(3, info.public_key);
    s.bindNoCopy(4, record.digest.bytes.data(), static_cast<int>(record.digest.bytes.size()));
    s.bind(5, static_cast<std::int64_t>(record.digest.pepper_id));
    s.bindNoCopy(6, info.title);
    s.bindNoCopy(7, info.description);
    s.bind(8, static_cast<std::int32_t>(info.status));
    s.bind(9, to_unix_millis(info.created_at));
    if (info.expires_at) {
      s.bind(10, to_unix_millis(*info.expires_at));
    } else {
      s.bind(10);
    }
    if (info.last_used_at) {
      s.bind(11, to_unix_millis(*info.last_used_at));
    } else {
      s.bind(11);
    }
    s.exec();
    impl_->note_rowid(sqlite3_last_insert_rowid(w.db.getHandle()));
  });
}

std::optional<KeyRecord> SqliteStore::find(std::string_view public_key) {
  return translated("find", [&]() -> std::optional<KeyRecord> {
    Impl::Lease r(*impl_);
    r->use_snapshot(impl_->snapshot_max_age, impl_->write_epoch->load(std::memory_order_acquire));
    RawStatement& s = r->find;
    RawUse use(s);
    s.bind(1, public_key);
    s.bind(2, r->decoy_rowid(impl_->max_rowid.load(std::memory_order_relaxed)));
    if (!s.step()) {
      // A miss whose decoy rowid is past the table's end (its last rows were deleted
      // since this reader learned max(rowid)), or an empty store: learn the end again
      // and read the decoy from the first row. Rare, and not tied to the key.
      sqlite3_reset(s.get());
      const std::int64_t last = r->read_max_rowid();
      impl_->max_rowid.store(last, std::memory_order_relaxed);
      if (last == 0) return std::nullopt;  // empty: no such key, no decoy row
      s.bind(2, std::int64_t{1});
      if (!s.step()) return std::nullopt;  // emptied meanwhile
    }
    const bool hit = sqlite3_column_int(s.get(), 0) == 1;
    KeyRecord record;
    if (!hit) {
      ++detail::decoy_reads();
      // Decoded like a hit, then dropped; a damaged decoy row must not fail the miss.
      try {
        record.digest = read_digest(s.get(), 2, "find");
        record.info = read_info(s.get(), "find", 4, &public_key);
      } catch (const Error&) {
      }
      return std::nullopt;
    }
    impl_->note_rowid(sqlite3_column_int64(s.get(), 1));
    record.digest = read_digest(s.get(), 2, "find");
    record.info = read_info(s.get(), "find", 4, &public_key);
    return record;
  });
}

std::vector<KeyInfo> SqliteStore::list(const Uuid& account_id) {
  const std::string account = account_id.to_string();
  return translated("list", [&] {
    std::vector<KeyInfo> out;
    Impl::Lease r(*impl_);
    r->end_snapshot();  // a management call reads the file as it is now
    RawStatement& s = r->list;
    RawUse use(s);
    s.bind(1, account);
    while (s.step()) out.push_back(read_info(s.get(), "list"));
    return out;
  });
}

namespace {

// Steps a RETURNING statement to completion (so COMMIT finds nothing in progress) and
// returns its row, if any. At most one row: key_id is the primary key.
std::optional<KeyInfo> step_returning(RawStatement& s, const char* op) {
  std::optional<KeyInfo> row;
  while (s.step()) {
    if (!row) row = read_info(s.get(), op);
  }
  return row;
}

// One revision step for a revoke or delete of `public_key`, logged in the same
// transaction: a process that sees the new revision also sees the change and its log row.
void bump_revision(Writer& w, const char* op, const std::string& public_key) {
  {
    StatementUse use(w.bump_revision);
    if (w.bump_revision.exec() != 1) corrupt(op, "apikeys_meta has no row");
  }
  {
    StatementUse use(w.log_change);
    w.log_change.bindNoCopy(1, public_key);
    w.log_change.exec();
  }
  StatementUse use(w.prune_changes);
  w.prune_changes.bind(1, static_cast<std::int64_t>(SqliteStore::kChangeLogSize));
  w.prune_changes.exec();
}

}  // namespace

std::optional<KeyInfo> SqliteStore::set_status(const Uuid& account_id, const Uuid& key_id,
                                               KeyStatus status) {
  const std::string key = key_id.to_string();
  const std::string account = account_id.to_string();
  return impl_->write("set_status", [&](Writer& w) {
    std::optional<KeyInfo> info;
    {
      RawUse use(w.set_status);
      w.set_status.bind(1, static_cast<std::int64_t>(status));
      w.set_status.bind(2, key);
      w.set_status.bind(3, account);
      info = step_returning(w.set_status, "set_status");
    }
    if (info) bump_revision(w, "set_status", info->public_key);
    return info;
  });
}

std::optional<KeyInfo> SqliteStore::remove(const Uuid& account_id, const Uuid& key_id) {
  const std::string key = key_id.to_string();
  const std::string account = account_id.to_string();
  return impl_->write("remove", [&](Writer& w) {
    std::optional<KeyInfo> info;
    {
      RawUse use(w.remove);
      w.remove.bind(1, key);
      w.remove.bind(2, account);
      info = step_returning(w.remove, "remove");
    }
    if (info) bump_revision(w, "remove", info->public_key);
    return info;
  });
}

void SqliteStore::record_last_use(const std::vector<LastUse>& uses) {
  if (uses.empty()) return;
  impl_->write("record_last_use", [&](Writer& w) {
    std::string key;
    for (const LastUse& use : uses) {
      StatementUse statement_use(w.last_use);
      key = use.key_id.to_string();
      w.last_use.bind(1, to_unix_millis(use.at));
      w.last_use.bindNoCopy(2, key);
      w.last_use.exec();  // 0 rows for an unknown key id: ignored, as documented.
    }
  });
}

const void* SqliteStore::identity() const noexcept { return impl_->write_epoch.get(); }

std::uint64_t SqliteStore::revision() {
  return translated("revision", [&] {
    Impl::Lease r(*impl_);
    r->end_snapshot();  // the revision as it is now, never a kept snapshot's
    SQLite::Statement& s = r->revision;
    StatementUse use(s);
    if (!s.executeStep()) corrupt("revision", "apikeys_meta has no row");
    const SQLite::Column c = s.getColumn(0);
    if (c.getType() != SQLite::INTEGER) corrupt("revision", "revision is not an integer");
    const auto revision = static_cast<std::uint64_t>(c.getInt64());
    // Another process revoked or deleted: no find() may answer from a snapshot taken
    // before this call (the validator clears its cache when revision() moves, and a
    // cold read after that must see the change).
    if (impl_->last_revision.exchange(revision) != revision ||
        !impl_->revision_known.exchange(true)) {
      impl_->bump_epoch();
    }
    return revision;
  });
}

std::optional<StoreChanges> SqliteStore::changes_since(std::uint64_t since) {
  return translated("changes_since", [&]() -> std::optional<StoreChanges> {
    Impl::Lease r(*impl_);
    r->end_snapshot();
    // One read transaction, so the revision and the log rows agree.
    SQLite::Transaction tx(r->db, SQLite::TransactionBehavior::DEFERRED);
    StoreChanges out;
    {
      SQLite::Statement& s = r->revision;
      StatementUse use(s);
      if (!s.executeStep()) corrupt("changes_since", "apikeys_meta has no row");
      const std::int64_t now = s.getColumn(0).getInt64();
      if (now < 0) corrupt("changes_since", "revision is negative");
      out.revision = static_cast<std::uint64_t>(now);
    }
    // Older than the log can reach, or newer than the store (a restored backup).
    if (since > out.revision || out.revision - since > kChangeLogSize) return std::nullopt;
    if (since == out.revision) return out;
    SQLite::Statement q(r->db, kChangesSql);
    q.bind(1, static_cast<std::int64_t>(since));
    q.bind(2, static_cast<std::int64_t>(out.revision));
    std::uint64_t expected = since + 1;
    out.public_keys.reserve(static_cast<std::size_t>(out.revision - since));
    while (q.executeStep()) {
      // Every step since `since` must be there, or some change would go unseen.
      if (static_cast<std::uint64_t>(q.getColumn(0).getInt64()) != expected) return std::nullopt;
      out.public_keys.push_back(q.getColumn(1).getString());
      ++expected;
    }
    if (expected != out.revision + 1) return std::nullopt;
    return out;
  });
}

}  // namespace apikeys
