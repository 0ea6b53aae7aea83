// Private to SqliteStore: the SQL of every prepared statement it keeps. The column
// lists of key rows come from src/record_fields.hpp; the functions build them when a
// connection prepares its statements, never per call.
// Thread-safety and ownership: constants and pure functions only.
#ifndef APIKEYS_SRC_SQLITE_QUERIES_HPP
#define APIKEYS_SRC_SQLITE_QUERIES_HPP

#include <string>

#include "record_fields.hpp"

namespace apikeys::detail::sqlite {

// find() reads one row whether or not the key exists (doc/sqlite-store.md, rules 12-14):
// (1) the row whose public_key is ?1 or, failing that, the first row at or after the
//     decoy rowid ?2; the first column says which;
// (2) only a decoy past the table's end yields no row;
// (3) public_key is compared, not read back: on a hit it equals ?1 byte for byte (TEXT
//     under BINARY collation).
// Columns: the hit flag, the rowid, then every field but public_key from
// kFindFirstField on (read_record()).
inline constexpr int kFindFirstField = 2;
inline std::string find_sql() {
  return "SELECT k.public_key = ?1, k.rowid, " +
         column_list(Columns::all, "k.", &field(Field::public_key)) +
         " FROM api_keys AS k"
         " WHERE k.rowid >= coalesce((SELECT rowid FROM api_keys WHERE public_key = ?1), ?2)"
         " ORDER BY k.rowid LIMIT 1";
}
inline constexpr const char* kMaxRowidSql = "SELECT coalesce(max(rowid), 0) FROM api_keys";
// The KeyInfo columns, as read_info() reads them.
inline std::string list_sql() {
  return "SELECT " + column_list(Columns::info) +
         " FROM api_keys WHERE account_id = ?1 ORDER BY created_at DESC, rowid DESC";
}
inline constexpr const char* kRevisionSql = "SELECT revision FROM apikeys_meta WHERE id = 1";
// The insert is sqlite/record_codec.hpp's insert_sql().
inline std::string set_status_sql() {
  return "UPDATE api_keys SET status = ?1 WHERE key_id = ?2 AND account_id = ?3 RETURNING " +
         column_list(Columns::info);
}
inline std::string remove_sql() {
  return "DELETE FROM api_keys WHERE key_id = ?1 AND account_id = ?2 RETURNING " +
         column_list(Columns::info);
}
inline constexpr const char* kBumpRevisionSql =
    "UPDATE apikeys_meta SET revision = revision + 1 WHERE id = 1";
// The change log (doc/sqlite-store.md, rules 9 and 10; doc/revocation.md).
inline constexpr const char* kLogChangeSql =
    "INSERT OR REPLACE INTO apikeys_changes (revision, public_key)"
    " SELECT revision, ?1 FROM apikeys_meta WHERE id = 1";
inline constexpr const char* kPruneChangesSql =
    "DELETE FROM apikeys_changes WHERE revision <= (SELECT revision FROM apikeys_meta"
    " WHERE id = 1) - ?1";
inline constexpr const char* kChangesSql =
    "SELECT revision, public_key FROM apikeys_changes WHERE revision > ?1 AND revision <= ?2"
    " ORDER BY revision";
// max(coalesce(x, ?1), ?1) keeps the later time and treats "never used" as older than
// any time, including one before 1970.
inline constexpr const char* kLastUseSql =
    "UPDATE api_keys SET last_used_at = max(coalesce(last_used_at, ?1), ?1) WHERE key_id = ?2";

}  // namespace apikeys::detail::sqlite

#endif  // APIKEYS_SRC_SQLITE_QUERIES_HPP
