// Private to SqliteStore: the boundary between SQLite and apikeys::Error, the prepared
// statement wrappers (SQLiteCpp's, and a raw sqlite3_stmt for the read paths), the
// column readers that decode a key row, and how a connection is opened.
// Thread-safety: none of these is shared; a statement is used by the thread that holds
// its connection. Ownership: a RawStatement owns its sqlite3_stmt and must die before
// the SQLite::Database it was prepared on.
#ifndef APIKEYS_SRC_SQLITE_STATEMENT_HPP
#define APIKEYS_SRC_SQLITE_STATEMENT_HPP

#include <sqlite3.h>

#include <SQLiteCpp/Database.h>
#include <SQLiteCpp/Exception.h>
#include <SQLiteCpp/Statement.h>
#include <fmt/format.h>

#include <cstdint>
#include <exception>
#include <limits>
#include <optional>
#include <string>
#include <string_view>

#include "apikeys/error.hpp"
#include "apikeys/sqlite_store.hpp"
#include "apikeys/types.hpp"
#include "record_fields.hpp"

namespace apikeys::detail::sqlite {

// ---------------------------------------------------------------------------------
// Errors. SQLite's messages name tables and columns, never bound values, so they carry
// no digest, secret or pepper.

Error translate(std::string_view op, const SQLite::Exception& e);

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

[[noreturn]] void corrupt(const char* op, const char* what);

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
std::string_view read_text_view(sqlite3_stmt* s, int i, const char* op, const char* what);
std::int64_t read_int(sqlite3_stmt* s, int i, const char* op, const char* what);
// True when column i of a find_sql() row is the integer 0 it selects for an empty text
// column (doc/sqlite-store.md, rule 37). A TEXT column never holds an integer, so no
// other statement's row is read this way.
inline bool empty_text_marker(sqlite3_stmt* s, int i) noexcept {
  return sqlite3_column_type(s, i) == SQLITE_INTEGER && sqlite3_column_int64(s, i) == 0;
}
// The KeyInfo fields of src/record_fields.hpp, in its order, from column 0 on.
// REQUIRES: `s` is on a row.
KeyInfo read_info(sqlite3_stmt* s, const char* op);
// The fields of `which` in src/record_fields.hpp (Columns::all or Columns::verdict) but
// public_key, in its order, from column `first` on, into `record`; public_key is set to
// `public_key` (find() searched for it). The others are left as they are.
// REQUIRES: `s` is on a row.
void read_record(sqlite3_stmt* s, const char* op, int first, std::string_view public_key,
                 KeyRecord& record, Columns which);

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
    check(
        sqlite3_bind_text(stmt_, index, text.data(), static_cast<int>(text.size()), SQLITE_STATIC));
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

// The name to give SQLite for the file at `path`: never read as a URI.
std::string filename_of(const std::string& path);

// Only the constructor passes `create`, and only for a missing file it may initialise:
// a connection reopened later must not leave an empty file where one was deleted.
SQLite::Database open_connection(const std::string& path, const SqliteStoreOptions& o, Role role,
                                 bool read_only, bool create = false);

}  // namespace apikeys::detail::sqlite

#endif  // APIKEYS_SRC_SQLITE_STATEMENT_HPP
