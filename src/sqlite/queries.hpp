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

// The admission columns (schema version 5; src/sqlite/admission.hpp): every key row read
// or returned has, after its record's fields, lineage_id and rate_limits
// (read_admission()); rows read with their credits then have kCreditsJoinedColumns.
inline constexpr const char* kAdmissionColumns = "lineage_id, rate_limits";
inline constexpr const char* kAdmissionColumnsK = "k.lineage_id, k.rate_limits";
inline constexpr int kAdmissionColumnCount = 2;
// A key's lineage in SQL: NULL lineage_id is the key's own id.
inline constexpr const char* kLineageOfK = "coalesce(k.lineage_id, k.key_id)";
// The credits of the key's lineage, from `LEFT JOIN key_credits AS c`: whether there
// are any, then read_credits()'s columns.
inline constexpr const char* kCreditsJoinedColumns =
    "c.lineage_id IS NOT NULL, c.remaining, c.refill_amount, c.refill_interval, c.refill_mode,"
    " c.refill_cap, c.refilled_period";
inline constexpr const char* kCreditsJoin =
    " LEFT JOIN key_credits AS c ON c.lineage_id = coalesce(k.lineage_id, k.key_id)";
inline constexpr const char* kCreditsColumns =
    "remaining, refill_amount, refill_interval, refill_mode, refill_cap, refilled_period";
// The KeyInfo columns with their admission and credits columns (read_full_info()).
inline std::string full_info_columns() {
  return column_list(Columns::info, "k.") + ", " + kAdmissionColumnsK + ", " +
         kCreditsJoinedColumns;
}
// The KeyInfo columns with their admission columns, for RETURNING (read_key_info()).
inline std::string returned_info_columns() {
  return column_list(Columns::info) + ", " + kAdmissionColumns;
}

// find() reads one row whether or not the key exists (doc/sqlite-store.md, rules 12-14):
// (1) the row whose public_key is ?1 or, failing that, the first row at or after the
//     decoy rowid ?2; the first column says which;
// (2) only a decoy past the table's end yields no row;
// (3) public_key is compared, not read back: on a hit it equals ?1 byte for byte (the
//     comparison is BINARY whatever the column's collation, so a file whose schema was
//     changed to match loosely still answers only the exact key).
// (4) whether the key's lineage has credits is the row's has_credits, which triggers
//     keep equal to a probe of key_credits (rule 38): a column, not a second cursor.
// Columns: the hit flag, the rowid, then the fields of `which` (Columns::all for find(),
// Columns::verdict for find_for_validation()) but public_key from kFindFirstField on
// (read_record()), the admission columns, the credits flag.
inline constexpr int kFindFirstField = 2;
constexpr int find_admission_column(Columns which) noexcept {
  return kFindFirstField + static_cast<int>(column_count(which)) - 1;
}
constexpr int find_credits_column(Columns which) noexcept {
  return find_admission_column(which) + kAdmissionColumnCount;
}
// A text column of find()'s, `k.<name>`, read as the integer 0 when it is empty:
// Debian's SQLite copies every text or blob value of a result row into a buffer of its
// own, an empty one included, and each such allocation takes the process-wide mutex of
// its memory statistics. Most keys leave their description, metadata, scopes and rate
// limits empty. A column of TEXT affinity never holds an integer, so 0 can only mean
// empty, and a NULL (a damaged row) still reads as corrupt (doc/sqlite-store.md,
// rule 37).
inline std::string empty_as_zero(const char* name) {
  const std::string column = std::string("k.") + name;
  return "CASE WHEN " + column + " = '' THEN 0 ELSE " + column + " END";
}
// find()'s columns of `which` but public_key: the text ones through empty_as_zero().
inline std::string find_columns(Columns which) {
  std::string out;
  for (const RecordField& f : kRecordFields) {
    if (!in_columns(which, f) || &f == &field(Field::public_key)) continue;
    if (!out.empty()) out += ", ";
    const bool text = f.kind == FieldKind::text || f.kind == FieldKind::scopes;
    out += text ? empty_as_zero(f.name) : std::string("k.") + f.name;
  }
  return out;
}
inline std::string find_sql(Columns which) {
  return "SELECT k.public_key = ?1 COLLATE BINARY, k.rowid, " + find_columns(which) +
         ", k.lineage_id, " + empty_as_zero("rate_limits") + ", k.has_credits" +
         " FROM api_keys AS k"
         " WHERE k.rowid >= coalesce((SELECT rowid FROM api_keys WHERE public_key = ?1), ?2)"
         " ORDER BY k.rowid LIMIT 1";
}
inline constexpr const char* kMaxRowidSql = "SELECT coalesce(max(rowid), 0) FROM api_keys";
// The KeyInfo columns with their credits, as read_full_info() reads them.
inline std::string list_sql() {
  return "SELECT " + full_info_columns() + " FROM api_keys AS k" + kCreditsJoin +
         " WHERE k.account_id = ?1 ORDER BY k.created_at DESC, k.rowid DESC";
}
// One key of one account (get(), and replace() telling not_found from conflict).
inline std::string get_sql() {
  return "SELECT " + full_info_columns() + " FROM api_keys AS k" + kCreditsJoin +
         " WHERE k.key_id = ?1 AND k.account_id = ?2";
}
// A page of list_page() (doc/sqlite-store.md, rule 26): keyset pagination on the index
// api_keys_account_page (account_id, created_at DESC, key_id DESC), so a page costs its
// own rows however deep it starts. key_id is canonical lower-case text, whose order is
// Uuid byte order.
// Parameters: ?1 account, ?2 limit, then (when `after`) ?3 created_at and ?4 key_id of
// the position, then (when `status`) the status as the last one.
inline std::string list_page_sql(bool after, bool status) {
  std::string sql = "SELECT " + full_info_columns() + " FROM api_keys AS k" + kCreditsJoin +
                    " WHERE k.account_id = ?1";
  if (after) sql += " AND (k.created_at < ?3 OR (k.created_at = ?3 AND k.key_id < ?4))";
  if (status) sql += after ? " AND k.status = ?5" : " AND k.status = ?3";
  return sql + " ORDER BY k.created_at DESC, k.key_id DESC LIMIT ?2";
}
inline constexpr const char* kRevisionSql = "SELECT revision FROM apikeys_meta WHERE id = 1";
// insert(): sqlite/record_codec.hpp's columns, then the admission columns.
inline std::string insert_key_sql() {
  return "INSERT INTO api_keys (" + column_list(Columns::all) + ", " + kAdmissionColumns +
         ") VALUES (" + parameter_list('?') + ", ?" + std::to_string(kFieldCount + 1) + ", ?" +
         std::to_string(kFieldCount + 2) + ")";
}
// The version moves only when the status does (SET reads the row's old values):
// doc/sqlite-store.md, rule 25.
inline std::string set_status_sql() {
  return "UPDATE api_keys SET version = version + (status != ?1), status = ?1"
         " WHERE key_id = ?2 AND account_id = ?3 RETURNING " +
         returned_info_columns();
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
// Compare-and-set on the version: ?9 key_id, ?10 account_id, ?11 the expected version;
// ?12 the rate limits (encode_rate_limits()).
// No row when the account has no such key or the version moved.
inline std::string replace_sql() {
  std::string sql = "UPDATE api_keys SET ";
  int n = 0;
  for (const Field f : kReplacedFields) {
    sql += field(f).name;
    sql += " = ?" + std::to_string(++n) + ", ";
  }
  return sql +
         "rate_limits = ?12, version = version + 1 WHERE key_id = ?9 AND account_id = ?10"
         " AND version = ?11 RETURNING " +
         returned_info_columns();
}
// revoke_all(): ?1 revoked, ?2 updated_at, ?3 account_id.
inline std::string revoke_all_sql() {
  return "UPDATE api_keys SET status = ?1, updated_at = ?2, version = version + 1"
         " WHERE account_id = ?3 AND status != ?1 RETURNING " +
         returned_info_columns();
}
inline std::string remove_sql() {
  return "DELETE FROM api_keys WHERE key_id = ?1 AND account_id = ?2 RETURNING " +
         returned_info_columns();
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

// Credits (doc/sqlite-store.md, rules 28-31).
// One lineage's credits row: ?1 the lineage.
inline std::string credits_sql() {
  return std::string("SELECT ") + kCreditsColumns + " FROM key_credits WHERE lineage_id = ?1";
}
// insert(): a lineage's first key creates its credits (an existing row is kept);
// change_credits() writes them whole. ?1 lineage, ?2 .. ?7 bind_credits(). A new balance
// takes a random generation (rule 40); put_credits keeps the row's unless ?8 is 1.
#define APIKEYS_NEW_GENERATION "(random() & 9223372036854775807)"
inline constexpr const char* kInsertCreditsSql =
    "INSERT OR IGNORE INTO key_credits (lineage_id, remaining, refill_amount, refill_interval,"
    " refill_mode, refill_cap, refilled_period, generation) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7,"
    " " APIKEYS_NEW_GENERATION ")";
inline constexpr const char* kPutCreditsSql =
    "INSERT OR REPLACE INTO key_credits (lineage_id, remaining, refill_amount, refill_interval,"
    " refill_mode, refill_cap, refilled_period, generation) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7,"
    " CASE WHEN ?8 THEN " APIKEYS_NEW_GENERATION
    " ELSE coalesce((SELECT generation FROM key_credits WHERE lineage_id = ?1), 0) END)";
#undef APIKEYS_NEW_GENERATION
inline constexpr const char* kDeleteCreditsSql = "DELETE FROM key_credits WHERE lineage_id = ?1";
// remove(): the credits go with the lineage's last key (?1 lineage, ?2 its account: all
// keys of a lineage are in one account, whose index this walks).
inline constexpr const char* kDropOrphanCreditsSql =
    "DELETE FROM key_credits WHERE lineage_id = ?1 AND NOT EXISTS (SELECT 1 FROM api_keys"
    " WHERE account_id = ?2 AND coalesce(lineage_id, key_id) = ?1)";
// The public keys of a lineage's keys: ?1 account, ?2 lineage.
inline constexpr const char* kLineageKeysSql =
    "SELECT public_key FROM api_keys WHERE account_id = ?1 AND coalesce(lineage_id, key_id) = ?2";
// return_credits(): ?1 lineage, ?2 credits (at most 2^53), ?3 the period they belong to.
inline constexpr const char* kReturnCreditsSql =
    "UPDATE key_credits SET remaining = min(remaining + ?2, 9007199254740992)"
    " WHERE lineage_id = ?1 AND refilled_period = ?3";
// return_credits_checked(): the same, and ?4 the generation they were taken from.
inline constexpr const char* kReturnCreditsCheckedSql =
    "UPDATE key_credits SET remaining = min(remaining + ?2, 9007199254740992)"
    " WHERE lineage_id = ?1 AND refilled_period = ?3 AND generation = ?4";

// take_credits(): ONE guarded UPDATE (rule 29). The refill is written inline on the
// row's own columns, in SET and WHERE alike (every SET expression reads the row as it
// was): ?1 lineage, ?2 today's day period, ?3 this month's period, ?4 the minimum,
// ?5 the most to take (max(min, max)). Returns the balance after, what was taken, the
// refill period after, the refill's interval and amount (for period_end) and the
// balance's generation. Plain
// columns only: SQLite 3.40 answers `refill_amount IS NOT NULL` in a RETURNING clause
// with 1 for a NULL amount.
// A refill is due when there is one and its period (<p>) is later than refilled_period;
// reset sets the balance to the amount; add_capped adds amount per period elapsed up
// to the cap (amount when 0), never lowering a larger balance, and multiplies only up
// to the periods needed to reach the cap (no overflow). No row: 0 rows, as for a
// balance below the minimum.
// With `unrefilled`, the take of take_credits_audited()'s first statement: the same,
// for a row with no refill due only (rule 36).
inline std::string take_credits_sql(bool unrefilled = false) {
  const std::string p = "(CASE refill_interval WHEN 1 THEN ?3 ELSE ?2 END)";
  const std::string cap =
      "min(CASE WHEN refill_cap = 0 THEN refill_amount ELSE refill_cap END, 9007199254740992)";
  const std::string step = "max(refill_amount, 1)";
  const std::string due = "(refill_amount IS NOT NULL AND " + p + " > refilled_period)";
  const std::string avail = "(CASE WHEN NOT " + due +
                            " THEN remaining"
                            " WHEN refill_mode = 0 THEN min(refill_amount, 9007199254740992)"
                            " WHEN remaining >= " +
                            cap +
                            " THEN remaining"
                            " ELSE min(" +
                            cap + ", remaining + " + step + " * min(" + p +
                            " - refilled_period, (" + cap + " - remaining + " + step + " - 1) / " +
                            step + ")) END)";
  const std::string take = "min(" + avail + ", ?5)";
  return "UPDATE key_credits SET remaining = " + avail + " - " + take + ", last_take = " + take +
         ", refilled_period = CASE WHEN " + due + " THEN " + p +
         " ELSE refilled_period END WHERE lineage_id = ?1 AND " + avail + " >= ?4" +
         (unrefilled ? " AND NOT " + due : std::string()) +
         " RETURNING remaining, last_take, refilled_period, refill_interval, refill_amount,"
         " generation";
}
// A rewritten digest's audit event (rule 36): key ?1, whatever its account.
inline std::string key_by_id_sql() {
  return "SELECT " + full_info_columns() + " FROM api_keys AS k" + kCreditsJoin +
         " WHERE k.key_id = ?1";
}
// A refill's audit event (rule 36): the lineage ?1's newest key, with its credits. The
// account's page index finds it; the account is the first key's (the lineage's id), or
// when that key is gone, that of any key of the lineage.
inline std::string newest_of_lineage_sql() {
  return "SELECT " + full_info_columns() + " FROM api_keys AS k" + kCreditsJoin +
         " WHERE k.account_id = (SELECT account_id FROM api_keys WHERE key_id = ?1"
         " UNION ALL SELECT account_id FROM api_keys WHERE lineage_id = ?1 LIMIT 1)"
         " AND " +
         kLineageOfK + " = ?1 ORDER BY k.created_at DESC, k.key_id DESC LIMIT 1";
}

// The audit trail (doc/sqlite-store.md, rules 32-35). An event row's columns, in the
// order kInsertAuditSql binds them (?1 .. ?11) and audit_events_sql() returns them.
inline constexpr const char* kAuditColumns =
    "event_id, time_ms, action, actor_type, actor_id, actor_detail, reason, account_id, key_id,"
    " before_json, after_json";
inline constexpr int kAuditColumnCount = 11;
inline std::string insert_audit_sql() {
  return std::string("INSERT INTO audit_events (") + kAuditColumns +
         ") VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)";
}
// A page of audit_events() (rule 34): keyset pagination on audit_events_account_time, or
// on audit_events_account_key_time for one key, newest first. ?1 account, ?2 limit, then
// only when asked for: ?3 key_id, ?4 the first millisecond at or after `since`, ?5 and ?6
// the position's time and event_id (an empty ?6 when the position's time is not a whole
// millisecond: then only its time bounds the page).
inline std::string audit_events_sql(bool key, bool since, bool after) {
  std::string sql =
      std::string("SELECT ") + kAuditColumns + " FROM audit_events WHERE account_id = ?1";
  if (key) sql += " AND key_id = ?3";
  if (since) sql += " AND time_ms >= ?4";
  if (after) sql += " AND (time_ms < ?5 OR (time_ms = ?5 AND event_id < ?6))";
  return sql + " ORDER BY time_ms DESC, event_id DESC LIMIT ?2";
}
// prune_audit(), one batch (rule 35): ?1 the first millisecond at or after `before`, ?2
// the batch size; deletes the ?2 oldest events before ?1, in the time index's order.
inline constexpr const char* kPruneAuditSql =
    "DELETE FROM audit_events WHERE rowid IN"
    " (SELECT rowid FROM audit_events WHERE time_ms < ?1 ORDER BY time_ms LIMIT ?2)";

}  // namespace apikeys::detail::sqlite

#endif  // APIKEYS_SRC_SQLITE_QUERIES_HPP
