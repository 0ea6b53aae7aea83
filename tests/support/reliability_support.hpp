// Helpers shared by the reliability suites: a raw sqlite3 connection (to look at what a
// SqliteStore wrote, or to hold locks against it), a full-row well-formedness check,
// (running a child program with captured output is in process_support.hpp).
// Thread-safety: RawDb is one connection, for one thread. Ownership: RawDb closes its
// connection.
#ifndef APIKEYS_TESTS_RELIABILITY_SUPPORT_HPP
#define APIKEYS_TESTS_RELIABILITY_SUPPORT_HPP

#include <fcntl.h>
#include <poll.h>
#include <sqlite3.h>
#include <sys/wait.h>
#include <unistd.h>

#include <array>
#include <cerrno>
#include <cstdint>
#include <optional>
#include <stdexcept>
#include <string>
#include <vector>

#include "apikeys/key_generator.hpp"
#include "apikeys/types.hpp"
#include "process_support.hpp"

namespace apikeys_test {

// One raw connection. Methods throw std::runtime_error on SQLite errors (with the code),
// so a test can tell "locked" from "broken".
class RawDb {
 public:
  explicit RawDb(const std::string& path, int flags = SQLITE_OPEN_READWRITE) {
    if (sqlite3_open_v2(path.c_str(), &db_, flags, nullptr) != SQLITE_OK) {
      const std::string msg = db_ != nullptr ? sqlite3_errmsg(db_) : "out of memory";
      sqlite3_close(db_);
      throw std::runtime_error("sqlite3_open_v2: " + msg);
    }
  }
  ~RawDb() { sqlite3_close_v2(db_); }
  RawDb(const RawDb&) = delete;
  RawDb& operator=(const RawDb&) = delete;

  sqlite3* handle() const noexcept { return db_; }

  // Runs `sql`; returns SQLite's result code (no throw), for statements expected to fail.
  int try_exec(const std::string& sql) {
    char* err = nullptr;
    const int rc = sqlite3_exec(db_, sql.c_str(), nullptr, nullptr, &err);
    sqlite3_free(err);
    return rc;
  }
  void exec(const std::string& sql) {
    const int rc = try_exec(sql);
    if (rc != SQLITE_OK) {
      throw std::runtime_error("sqlite3_exec(" + sql + "): " + std::to_string(rc) + " " +
                               sqlite3_errmsg(db_));
    }
  }

  // Every row of a query, every column as text (NULL as nullopt).
  std::vector<std::vector<std::optional<std::string>>> query(const std::string& sql) {
    sqlite3_stmt* s = nullptr;
    if (sqlite3_prepare_v2(db_, sql.c_str(), -1, &s, nullptr) != SQLITE_OK) {
      throw std::runtime_error("prepare(" + sql + "): " + sqlite3_errmsg(db_));
    }
    std::vector<std::vector<std::optional<std::string>>> rows;
    int rc;
    while ((rc = sqlite3_step(s)) == SQLITE_ROW) {
      std::vector<std::optional<std::string>> row;
      for (int c = 0; c < sqlite3_column_count(s); ++c) {
        if (sqlite3_column_type(s, c) == SQLITE_NULL) {
          row.emplace_back(std::nullopt);
        } else {
          const auto* p = static_cast<const char*>(sqlite3_column_blob(s, c));
          row.emplace_back(std::string(p != nullptr ? p : "",
                                       static_cast<std::size_t>(sqlite3_column_bytes(s, c))));
        }
      }
      rows.push_back(std::move(row));
    }
    sqlite3_finalize(s);
    if (rc != SQLITE_DONE) throw std::runtime_error("step(" + sql + "): " + std::to_string(rc));
    return rows;
  }

  // The first column of the first row, or "" when there is none.
  std::string scalar(const std::string& sql) {
    const auto rows = query(sql);
    if (rows.empty() || rows[0].empty() || !rows[0][0]) return {};
    return *rows[0][0];
  }

 private:
  sqlite3* db_ = nullptr;
};

// "ok" when PRAGMA integrity_check finds nothing; otherwise its findings. `flags`:
// SQLITE_OPEN_READWRITE lets SQLite roll back an interrupted transaction first (a hot
// journal), as the next writer to open the file would.
inline std::string integrity_check(const std::string& path, int flags = SQLITE_OPEN_READONLY) {
  RawDb db(path, flags);
  std::string out;
  for (const auto& row : db.query("PRAGMA integrity_check")) {
    if (!out.empty()) out += "; ";
    out += row.at(0).value_or("NULL");
  }
  return out;
}

// Checks that every api_keys row has every field well-formed (types, UUIDs, key shape,
// a 32-byte digest, a known status). Returns the problems found (empty: all good).
inline std::vector<std::string> malformed_rows(RawDb& db, std::size_t* row_count = nullptr) {
  const apikeys::KeyFormat format;
  std::vector<std::string> problems;
  const auto rows = db.query(
      "SELECT typeof(key_id), key_id, typeof(account_id), account_id, typeof(public_key), public_key,"
      " typeof(digest), length(digest), typeof(pepper_id), pepper_id, typeof(title), title,"
      " typeof(description), typeof(status), status, typeof(created_at), typeof(expires_at),"
      " typeof(last_used_at) FROM api_keys");
  if (row_count != nullptr) *row_count = rows.size();
  for (const auto& r : rows) {
    auto v = [&](std::size_t i) { return r.at(i).value_or("NULL"); };
    const std::string id = v(1);
    auto bad = [&](const std::string& what) { problems.push_back("row " + id + ": " + what); };
    if (v(0) != "text" || !apikeys::Uuid::parse(v(1))) bad("key_id");
    if (v(2) != "text" || !apikeys::Uuid::parse(v(3))) bad("account_id");
    if (v(4) != "text" || !format.is_public_key(v(5))) bad("public_key");
    if (v(6) != "blob" || v(7) != "32") bad("digest");
    if (v(8) != "integer" || v(9) != "1") bad("pepper_id");
    if (v(10) != "text" || v(11).empty()) bad("title");
    if (v(12) != "text") bad("description");
    if (v(13) != "integer" || (v(14) != "0" && v(14) != "1")) bad("status");
    if (v(15) != "integer") bad("created_at");
    if (v(16) != "integer" && v(16) != "null") bad("expires_at");
    if (v(17) != "integer" && v(17) != "null") bad("last_used_at");
  }
  return problems;
}

}  // namespace apikeys_test

#endif  // APIKEYS_TESTS_RELIABILITY_SUPPORT_HPP
