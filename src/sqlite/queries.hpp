// Private to SqliteStore: the SQL of every prepared statement it keeps. The column
// lists of key rows come from src/record_fields.hpp; the functions build them when a
// connection prepares its statements, never per call.
// Thread-safety and ownership: constants and pure functions only.
#ifndef APIKEYS_SRC_SQLITE_QUERIES_HPP
#define APIKEYS_SRC_SQLITE_QUERIES_HPP

#include <cstddef>
#include <iterator>
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
// One key of one account (get(), and replace() telling not_found from conflict).
inline std::string get_sql() {
  return "SELECT " + column_list(Columns::info) +
         " FROM api_keys WHERE key_id = ?1 AND account_id = ?2";
}
// A page of list_page() (doc/sqlite-store.md, rule 26): keyset pagination on the index
// api_keys_account_page (account_id, created_at DESC, key_id DESC), so a page costs its
// own rows however deep it starts. key_id is canonical lower-case text, whose order is
// Uuid byte order.
// Parameters: ?1 account, ?2 limit, then (when `after`) ?3 created_at and ?4 key_id of
// the position, then (when `status`) the status as the last one.
inline std::string list_page_sql(bool after, bool status) {
  std::string sql = "SELECT " + column_list(Columns::info) + " FROM api_keys WHERE account_id = ?1";
  if (after) sql += " AND (created_at < ?3 OR (created_at = ?3 AND key_id < ?4))";
  if (status) sql += after ? " AND status = ?5" : " AND status = ?3";
  return sql + " ORDER BY created_at DESC, key_id DESC LIMIT ?2";
}
inline constexpr const char* kRevisionSql = "SELECT revision FROM apikeys_meta WHERE id = 1";
// The insert is sqlite/record_codec.hpp's insert_sql().
// The version moves only when the status does (SET reads the row's old values):
// doc/sqlite-store.md, rule 25.
inline std::string set_status_sql() {
  return "UPDATE api_keys SET version = version + (status != ?1), status = ?1"
         " WHERE key_id = ?2 AND account_id = ?3 RETURNING " +
         column_list(Columns::info);
}
// The fields replace() writes, in table order, which is the order its parameters ?1 .. ?8
// bind them in (bind_replaced() in sqlite_store.cpp walks the fields in table order).
inline constexpr Field kReplacedFields[] = {Field::title,      Field::description, Field::status,
                                            Field::expires_at, Field::metadata,    Field::scopes,
                                            Field::updated_at, Field::rotated_to};
constexpr bool replaced_fields_in_table_order() noexcept {
  for (std::size_t i = 1; i < std::size(kReplacedFields); ++i) {
    if (kReplacedFields[i - 1] >= kReplacedFields[i]) return false;
  }
  return true;
}
static_assert(replaced_fields_in_table_order(), "kReplacedFields must be in table order");
constexpr bool is_replaced(const RecordField& f) noexcept {
  for (const Field r : kReplacedFields) {
    if (&field(r) == &f) return true;
  }
  return false;
}
// Compare-and-set on the version: ?9 key_id, ?10 account_id, ?11 the expected version.
// No row when the account has no such key or the version moved.
inline std::string replace_sql() {
  std::string sql = "UPDATE api_keys SET ";
  int n = 0;
  for (const Field f : kReplacedFields) {
    sql += field(f).name;
    sql += " = ?" + std::to_string(++n) + ", ";
  }
  return sql + "version = version + 1 WHERE key_id = ?9 AND account_id = ?10 AND version = ?11" +
         " RETURNING " + column_list(Columns::info);
}
// revoke_all(): ?1 revoked, ?2 updated_at, ?3 account_id.
inline std::string revoke_all_sql() {
  return "UPDATE api_keys SET status = ?1, updated_at = ?2, version = version + 1"
         " WHERE account_id = ?3 AND status != ?1 RETURNING " +
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

// replace_digests(): compare-and-set on the digest, bytes and pepper id (?4, ?5), of key
// ?3. Nothing else changes: not the version, updated_at or the revision (rule 27).
inline constexpr const char* kReplaceDigestSql =
    "UPDATE api_keys SET digest = ?1, pepper_id = ?2"
    " WHERE key_id = ?3 AND digest = ?4 AND pepper_id = ?5";
inline constexpr const char* kPepperCountsSql =
    "SELECT pepper_id, count(*) FROM api_keys GROUP BY pepper_id ORDER BY pepper_id";

}  // namespace apikeys::detail::sqlite

#endif  // APIKEYS_SRC_SQLITE_QUERIES_HPP
