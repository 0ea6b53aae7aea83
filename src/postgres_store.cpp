// PostgresStore: a bounded pool of libpq connections, each with its statements
// prepared once; every wait bounded by a client-side deadline (pg_connection.hpp);
// the schema created and migrated under an advisory lock; writes as single atomic
// statements (every change bumps the revision and logs the key in the same statement),
// change_credits() as one transaction; credits in a table of their own, one row per
// lineage, charged by one guarded UPDATE.
#include "apikeys/postgres_store.hpp"

#include <libpq-fe.h>

#include <fmt/format.h>

#include <algorithm>
#include <array>
#include <charconv>
#include <cstdint>
#include <cstring>
#include <deque>
#include <exception>
#include <iterator>
#include <limits>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "apikeys/error.hpp"
#include "apikeys/limiter.hpp"
#include "credits_ops.hpp"
#include "decoy_reads.hpp"
#include "hex.hpp"
#include "pg_connection.hpp"
#include "record_fields.hpp"
#include "scope.hpp"
#include "thread_annotations.hpp"
#include "wipe.hpp"

namespace apikeys {
namespace {

using pg::Deadline;
using pg::PgConnection;
using pg::PgResult;
using pg::SteadyClock;

// ---------------------------------------------------------------------------------
// Schema. Each step moves the tables from version `to - 1` to `to`; steps are
// append-only (a released step is never edited). `{s}` is the quoted schema name.

struct Migration {
  int to;
  const char* sql;
};

constexpr Migration kMigrations[] = {
    {1, R"sql(
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
)sql"},
    {2, R"sql(
CREATE TABLE {s}.apikeys_changes (
  revision   bigint NOT NULL PRIMARY KEY,
  public_key text   NOT NULL
);
)sql"},
    // Key policy: the disabled status, metadata, scopes, updated_at, version, rotation
    // links; and the index that list pages walk (created_at, then key_id, descending).
    {3, R"sql(
ALTER TABLE {s}.apikeys_keys DROP CONSTRAINT apikeys_keys_status_check;
ALTER TABLE {s}.apikeys_keys ADD CONSTRAINT apikeys_keys_status_check
  CHECK (status IN (0, 1, 2));
ALTER TABLE {s}.apikeys_keys
  ADD COLUMN metadata     text   NOT NULL DEFAULT '',
  ADD COLUMN scopes       text   NOT NULL DEFAULT '',
  ADD COLUMN updated_at   bigint,
  ADD COLUMN version      bigint NOT NULL DEFAULT 1 CHECK (version >= 1),
  ADD COLUMN rotated_from uuid,
  ADD COLUMN rotated_to   uuid;
UPDATE {s}.apikeys_keys SET updated_at = created_at;
ALTER TABLE {s}.apikeys_keys ALTER COLUMN updated_at SET NOT NULL;
CREATE INDEX apikeys_keys_account_page
  ON {s}.apikeys_keys (account_id, created_at DESC, key_id DESC);
)sql"},
    // Admission: each key's lineage (NULL: its own id) and rate limits (the
    // format_rate_limit() specs joined by ';'), and the credits of each lineage, one row
    // per lineage (last_take: what the last take_credits() took, for its RETURNING).
    {4, R"sql(
ALTER TABLE {s}.apikeys_keys
  ADD COLUMN lineage_id  uuid,
  ADD COLUMN rate_limits text NOT NULL DEFAULT '';
CREATE INDEX apikeys_keys_lineage ON {s}.apikeys_keys ((COALESCE(lineage_id, key_id)));
CREATE TABLE {s}.apikeys_key_credits (
  lineage_id      uuid     NOT NULL PRIMARY KEY,
  remaining       bigint   NOT NULL CHECK (remaining BETWEEN 0 AND 9007199254740992),
  refill_amount   bigint   CHECK (refill_amount BETWEEN 0 AND 9007199254740992),
  refill_interval smallint NOT NULL DEFAULT 0 CHECK (refill_interval IN (0, 1)),
  refill_mode     smallint NOT NULL DEFAULT 0 CHECK (refill_mode IN (0, 1)),
  refill_cap      bigint   NOT NULL DEFAULT 0 CHECK (refill_cap BETWEEN 0 AND 9007199254740992),
  refilled_period bigint   NOT NULL DEFAULT 0,
  last_take       bigint   NOT NULL DEFAULT 0
);
)sql"},
    // The audit trail: one row per event, written in the transaction of its change.
    // Pages walk (account_id[, key_id], time_ms DESC, event_id DESC); pruning walks
    // time_ms. The JSON is kept as the library wrote it (text, never parsed here).
    {5, R"sql(
CREATE TABLE {s}.apikeys_audit_events (
  event_id     uuid     NOT NULL PRIMARY KEY,
  time_ms      bigint   NOT NULL,
  account_id   uuid     NOT NULL,
  key_id       uuid     NOT NULL,
  action       smallint NOT NULL CHECK (action BETWEEN 0 AND 255),
  actor_type   smallint NOT NULL CHECK (actor_type BETWEEN 0 AND 255),
  actor_id     text     NOT NULL,
  actor_detail text     NOT NULL,
  reason       text     NOT NULL,
  before_json  text     NOT NULL,
  after_json   text     NOT NULL
);
CREATE INDEX apikeys_audit_events_account
  ON {s}.apikeys_audit_events (account_id, time_ms DESC, event_id DESC);
CREATE INDEX apikeys_audit_events_key
  ON {s}.apikeys_audit_events (account_id, key_id, time_ms DESC, event_id DESC);
CREATE INDEX apikeys_audit_events_time ON {s}.apikeys_audit_events (time_ms);
)sql"},
    // A balance's generation (CreditTake::generation), new whenever the balance is set:
    // return_credits_checked() lands only on the balance the credits were taken from.
    {6, R"sql(
ALTER TABLE {s}.apikeys_key_credits ADD COLUMN generation bigint NOT NULL DEFAULT 0;
)sql"},
};

// A new balance's generation: random, so that one removed and set again never repeats
// one that a give-back in flight may hold (doc/sqlite-store.md, rule 40, says why).
constexpr const char* kNewGenerationSql = "floor(random() * 9.2e18)::bigint";

// How many changes the change log keeps (doc/revocation.md).
constexpr auto kChangeLogSize = static_cast<std::int64_t>(PostgresStore::kChangeLogSize);

constexpr int kCurrentVersion = kMigrations[std::size(kMigrations) - 1].to;

// The column lists of key rows come from src/record_fields.hpp. Times are Unix
// milliseconds (bigint): exact, the precision every store keeps.
constexpr auto kInfoColumnCount = static_cast<int>(detail::kInfoFieldCount);
constexpr auto kFieldCount = static_cast<int>(detail::kFieldCount);

std::string replace_schema(std::string sql, const std::string& quoted) {
  for (std::size_t at = sql.find("{s}"); at != std::string::npos; at = sql.find("{s}", at)) {
    sql.replace(at, 3, quoted);
    at += quoted.size();
  }
  return sql;
}

// The key columns that are PostgresStore's own, after those of record_fields.hpp (read
// by read_extras()), and the credits columns every read of a key joins to them.
constexpr const char* kExtraColumns = "lineage_id, rate_limits";
constexpr int kExtraColumnCount = 2;
constexpr const char* kCreditColumns =
    "c.remaining, c.refill_amount, c.refill_interval, c.refill_mode, c.refill_cap,"
    " c.refilled_period";
constexpr int kCreditColumnCount = 6;

// The largest balance (KeyPolicyLimits::kMaxCredits), as SQL.
constexpr const char* kMaxCreditsSql = "9007199254740992";

// "a.key_id, a.account_id, ..., a.lineage_id, a.rate_limits, c.remaining, ...": a key
// as read_info() or (with every field) read_found() decodes it, from the row `a` and
// the credits `c` joined by credits_join().
std::string key_columns(detail::Columns which, const std::string& a) {
  const std::string prefix = a + ".";
  return fmt::format("{}, {}.lineage_id, {}.rate_limits, {}",
                     detail::column_list(which, prefix.c_str()), a, a, kCreditColumns);
}

// The lineage's credits (one round trip: a LEFT JOIN, NULLs when it has none).
std::string credits_join(const std::string& s, const std::string& a) {
  return fmt::format(
      " LEFT JOIN {0}.apikeys_key_credits c ON c.lineage_id ="
      " COALESCE({1}.lineage_id, {1}.key_id)",
      s, a);
}

// find()'s statement, reading the fields of `which` (Columns::all, or Columns::verdict
// for find_for_validation()) in table order (read_found()), the credits, and whether the
// row is the key's: one row, in one round trip, whether or not the key exists (a timing
// oracle otherwise, doc/failure-modes.md). One range scan of the public-key index from
// $1 reads the key's row when it exists and otherwise the row of the next public key in
// the index's order, a decoy, by the same path. A $1 past the last public key reads the
// first row instead (the second branch, which the LIMIT over the UNION ALL starts only
// when the first found nothing). Only an empty table gives no row.
std::string find_sql(const std::string& s, detail::Columns which) {
  return fmt::format(
      "(SELECT {1}, k.public_key = $1 FROM {0}.apikeys_keys k{2}"
      " WHERE k.public_key >= $1 ORDER BY k.public_key LIMIT 1)"
      " UNION ALL (SELECT {1}, k.public_key = $1 FROM {0}.apikeys_keys k{2}"
      " ORDER BY k.public_key LIMIT 1) LIMIT 1",
      s, key_columns(which, "k"), credits_join(s, "k"));
}

// The refill of a credits row (src/credits.cpp, refilled()) as SQL expressions over the
// row's own columns, given the parameters holding the current monthly and daily
// periods. Written inline in the statements, never read through a subquery or CTE:
// under READ COMMITTED an UPDATE re-evaluates them on the locked row version, where a
// subquery would answer from the statement's snapshot.
struct RefillSql {
  std::string period;     // the current period of the row's interval
  std::string due;        // a refill is due
  std::string available;  // the balance with the refill due applied
  std::string refilled;   // refilled_period after it

  RefillSql(const char* month, const char* day)
      : period(fmt::format("(CASE refill_interval WHEN 1 THEN {}::bigint ELSE {}::bigint END)",
                           month, day)),
        due(fmt::format("(refill_amount IS NOT NULL AND {} > refilled_period)", period)) {
    const std::string cap =
        fmt::format("LEAST(CASE WHEN refill_cap = 0 THEN refill_amount ELSE refill_cap END, {})",
                    kMaxCreditsSql);
    // add_capped: + amount per period elapsed, up to the cap, never lowering; in numeric,
    // which cannot overflow.
    available = fmt::format(
        "(CASE WHEN NOT {0} THEN remaining"
        " WHEN refill_mode = 0 THEN LEAST(refill_amount, {1})"
        " WHEN remaining >= {2} THEN remaining"
        " ELSE LEAST({2}::numeric, remaining::numeric + GREATEST(refill_amount, 1)::numeric"
        " * ({3}::numeric - refilled_period::numeric))::bigint END)",
        due, kMaxCreditsSql, cap, period);
    refilled = fmt::format("(CASE WHEN {} THEN {} ELSE refilled_period END)", due, period);
  }
};

struct Statements {
  std::string info_columns;  // first: the statements below use it
  std::string returning;     // what writes return: info_columns and kExtraColumns
  std::string find, find_for_validation, list, insert, set_status, remove, last_use, revision,
      changes;
  std::string get, page_first, page_after, replace, rotate, revoke_all;
  std::string replace_digests, pepper_counts;
  std::string take_credits, credits_view, return_credits, return_credits_checked,
      drop_orphan_credits;
  std::string lock_key, lock_account, revoke_locked, insert_events, prune_audit;
  std::string replace_digests_keys, lock_credits, newest_key;

  explicit Statements(const std::string& s)
      : info_columns(detail::column_list(detail::Columns::info)),
        returning(info_columns + ", " + kExtraColumns),
        find(find_sql(s, detail::Columns::all)),
        find_for_validation(find_sql(s, detail::Columns::verdict)),
        list(fmt::format("SELECT {} FROM {}.apikeys_keys k{} WHERE k.account_id = $1"
                         " ORDER BY k.created_at DESC, k.seq DESC",
                         key_columns(detail::Columns::info, "k"), s, credits_join(s, "k"))),
        // The key, then its lineage's credits when it starts the lineage ($20 not NULL):
        // one statement, so both or neither. A credits row left by a lineage whose keys
        // are gone is replaced.
        insert(fmt::format(
            "WITH inserted AS (INSERT INTO {0}.apikeys_keys ({1}, {2}) VALUES ({3}, ${4}, ${5})"
            " RETURNING key_id)"
            " INSERT INTO {0}.apikeys_key_credits (lineage_id, remaining, refill_amount,"
            " refill_interval, refill_mode, refill_cap, refilled_period, generation)"
            " SELECT key_id, ${6}::bigint, ${7}::bigint, ${8}::smallint, ${9}::smallint,"
            " ${10}::bigint, ${11}::bigint, {12} FROM inserted WHERE ${6}::bigint IS NOT NULL"
            " ON CONFLICT (lineage_id) DO UPDATE SET remaining = EXCLUDED.remaining,"
            " refill_amount = EXCLUDED.refill_amount, refill_interval = EXCLUDED.refill_interval,"
            " refill_mode = EXCLUDED.refill_mode, refill_cap = EXCLUDED.refill_cap,"
            " refilled_period = EXCLUDED.refilled_period, last_take = 0,"
            " generation = EXCLUDED.generation",
            s, detail::column_list(detail::Columns::all), kExtraColumns,
            detail::parameter_list('$'), kFieldCount + 1, kFieldCount + 2, kFieldCount + 3,
            kFieldCount + 4, kFieldCount + 5, kFieldCount + 6, kFieldCount + 7, kFieldCount + 8,
            kNewGenerationSql)),
        // One statement, one transaction: the bump and its change-log row are written
        // (once, to completion) whether or not the outer query reads them, and only
        // when a row changed. The bump's row lock orders concurrent writers, so
        // revisions commit in order and the log has no gap a reader could see.
        // The version moves only when the status does: a retry after a lost reply
        // finds the status already set and changes nothing more.
        set_status(fmt::format("WITH changed AS (UPDATE {0}.apikeys_keys SET status = $1,"
                               " version = version + CASE WHEN status = $1 THEN 0 ELSE 1 END"
                               " WHERE key_id = $2 AND account_id = $3 RETURNING {1}),{2}"
                               " SELECT {3} FROM changed{4}",
                               s, returning, log_change(s, "changed"),
                               key_columns(detail::Columns::info, "changed"),
                               credits_join(s, "changed"))),
        // The key is returned with its lineage's credits as they were; the credits go
        // with the lineage's last key in a statement of their own (drop_orphan_credits:
        // under READ COMMITTED this statement's snapshot may predate a successor that
        // a rotate() committed while the DELETE waited on the row lock).
        remove(fmt::format(
            "WITH gone AS (DELETE FROM {0}.apikeys_keys WHERE key_id = $1 AND account_id = $2"
            " RETURNING {1}),{2}"
            " SELECT {3} FROM gone{4}",
            s, returning, log_change(s, "gone"), key_columns(detail::Columns::info, "gone"),
            credits_join(s, "gone"))),
        // GREATEST ignores NULL: "never used" loses to any time. Duplicates in the batch
        // are folded first (an UPDATE ... FROM with two matches would pick either).
        last_use(fmt::format(
            "UPDATE {}.apikeys_keys k SET last_used_at = GREATEST(k.last_used_at, u.at)"
            " FROM (SELECT id, max(at) AS at FROM unnest($1::uuid[], $2::bigint[]) AS t(id, at)"
            " GROUP BY id) u WHERE k.key_id = u.id",
            s)),
        revision(fmt::format("SELECT revision FROM {}.apikeys_meta WHERE id = 1", s)),
        // One statement, one snapshot: the revision and the log rows up to it agree.
        changes(fmt::format(
            "SELECT m.revision, c.revision, c.public_key FROM {0}.apikeys_meta m"
            " LEFT JOIN {0}.apikeys_changes c ON c.revision > $1 AND c.revision <= m.revision"
            " WHERE m.id = 1 ORDER BY c.revision",
            s)),
        get(fmt::format("SELECT {} FROM {}.apikeys_keys k{} WHERE k.key_id = $1"
                        " AND k.account_id = $2",
                        key_columns(detail::Columns::info, "k"), s, credits_join(s, "k"))),
        // Pages walk apikeys_keys_account_page (account_id, created_at DESC, key_id DESC).
        // The position is spelled out so that created_at bounds the index scan; a NULL
        // status ($2) means every status.
        page_first(fmt::format("SELECT {} FROM {}.apikeys_keys k{} WHERE k.account_id = $1"
                               " AND ($2::smallint IS NULL OR k.status = $2)"
                               " ORDER BY k.created_at DESC, k.key_id DESC LIMIT $3",
                               key_columns(detail::Columns::info, "k"), s, credits_join(s, "k"))),
        page_after(fmt::format("SELECT {} FROM {}.apikeys_keys k{} WHERE k.account_id = $1"
                               " AND ($2::smallint IS NULL OR k.status = $2)"
                               " AND k.created_at <= $3 AND (k.created_at < $3 OR k.key_id < $4)"
                               " ORDER BY k.created_at DESC, k.key_id DESC LIMIT $5",
                               key_columns(detail::Columns::info, "k"), s, credits_join(s, "k"))),
        // Compare-and-set on the version, the bump and its log row in the same
        // statement. No row: not this account's key, or another version (get tells).
        replace(fmt::format("WITH {},{} SELECT {} FROM changed{}", replace_cte(s, returning),
                            log_change(s, "changed"), key_columns(detail::Columns::info, "changed"),
                            credits_join(s, "changed"))),
        // replace, and the successor inserted only if the replace applied: one
        // statement, so a duplicate successor aborts both.
        // The successor carries its lineage_id and never creates credits: it shares the
        // lineage's.
        rotate(fmt::format(
            "WITH {}, successor AS (INSERT INTO {}.apikeys_keys ({}, {})"
            " SELECT {}, ${}::uuid, ${}::text WHERE EXISTS (SELECT 1 FROM changed)),{}"
            " SELECT {} FROM changed{}",
            replace_cte(s, returning), s, detail::column_list(detail::Columns::all), kExtraColumns,
            typed_parameters(kReplaceParamCount + 1), kReplaceParamCount + kFieldCount + 1,
            kReplaceParamCount + kFieldCount + 2, log_change(s, "changed"),
            key_columns(detail::Columns::info, "changed"), credits_join(s, "changed"))),
        // Every key revoked here takes a revision of its own and a log row, numbered in
        // one statement; rows that would fall out of the log at once are not written, and
        // changes_since() answers nullopt for a revision before them.
        revoke_all(revoke_all_sql(s, info_columns, returning, "")),
        // Compare-and-set on the digest of every change in one statement: $1 key ids,
        // $2 and $3 the `from` digests (hex) and pepper ids, $4 and $5 the `to` ones, in
        // batch order. Each change is matched against the digest as it was when the
        // statement began; of several changes of one key that match, the first in the
        // batch wins (a key is rewritten at most once). The guard is repeated in the
        // UPDATE's own WHERE, so that a row changed by a concurrent commit is checked
        // again as it now is (READ COMMITTED re-evaluates it): a digest rewritten
        // meanwhile is skipped, and a revoke or rotation is never undone (only digest
        // and pepper_id are set). Neither the version nor the revision moves, and
        // nothing is logged: no verdict changes.
        replace_digests(fmt::format("WITH {} {}", digest_batch(s), digest_update(s))),
        pepper_counts(fmt::format("SELECT pepper_id, count(*) FROM {}.apikeys_keys"
                                  " GROUP BY pepper_id ORDER BY pepper_id",
                                  s)) {
    // $1 lineage, $2 min, $3 max (at least min), $4 and $5 the current monthly and daily
    // periods, $6 whether it may write a refill due. One guarded statement on the locked
    // row: the refill due and the take in one step, nothing taken (and no row) when the
    // balance would fall below min, or when a refill is due and $6 is false (the audited
    // take then writes the refill, and its event, in a transaction of its own).
    const RefillSql t("$4", "$5");
    take_credits = fmt::format(
        "UPDATE {0}.apikeys_key_credits SET remaining = {1} - LEAST({1}, $3::bigint),"
        " last_take = LEAST({1}, $3::bigint), refilled_period = {2}"
        " WHERE lineage_id = $1 AND ($6::boolean OR NOT {3}) AND {1} >= $2::bigint"
        " RETURNING remaining, last_take, refilled_period, refill_interval,"
        " refill_amount IS NOT NULL, generation",
        s, t.available, t.refilled, t.due);
    // After a take that took nothing: $1 lineage, $2 and $3 the periods, $4 whether it may
    // write a refill due. Writes the refill due (once per period, whoever does it) and
    // reports the balance; no row: no credits. The last column says that a refill is due
    // and was not written ($4 false): the balance reported is then the refilled one, as
    // computed on the statement's snapshot, and nothing changed.
    const RefillSql v("$2", "$3");
    credits_view = fmt::format(
        "WITH due AS (UPDATE {0}.apikeys_key_credits SET remaining = {1},"
        " refilled_period = {2}, last_take = 0 WHERE lineage_id = $1 AND {3} AND $4::boolean"
        " RETURNING remaining, refilled_period, refill_interval, refill_amount IS NOT NULL,"
        " false)"
        " SELECT * FROM due UNION ALL"
        " SELECT {1}, {2}, refill_interval, refill_amount IS NOT NULL, {3} AND NOT $4::boolean"
        " FROM {0}.apikeys_key_credits WHERE lineage_id = $1 AND NOT EXISTS (SELECT 1 FROM due)",
        s, v.available, v.refilled, v.due);
    // $1 lineage, $2 credits (at most kMaxCredits), $3 the period they belong to; and
    // for the checked form, $4 the balance's generation they were taken from.
    return_credits = fmt::format(
        "UPDATE {0}.apikeys_key_credits SET remaining = LEAST(remaining + $2::bigint, {1})"
        " WHERE lineage_id = $1 AND refilled_period = $3::bigint",
        s, kMaxCreditsSql);
    return_credits_checked = return_credits + " AND generation = $4::bigint";
    // $1 lineage. Its own statement, after remove(): a fresh snapshot sees a successor
    // that a rotate() committed while remove() waited for the old key's row lock.
    drop_orphan_credits = fmt::format(
        "DELETE FROM {0}.apikeys_key_credits WHERE lineage_id = $1 AND NOT EXISTS"
        " (SELECT 1 FROM {0}.apikeys_keys WHERE COALESCE(lineage_id, key_id) = $1)",
        s);

    // The audit trail (the *_audited writes, each one transaction). A key as get()
    // reads it, its row locked until the transaction ends: what the write then replaces
    // is what was read. $1 key_id, $2 account_id.
    lock_key = get + " FOR UPDATE OF k";
    // The account's keys that revoke_all would revoke, locked in key_id order (two
    // revokes of one account lock alike, so never deadlock on each other).
    lock_account = fmt::format(
        "SELECT {} FROM {}.apikeys_keys k{} WHERE k.account_id = $1 AND k.status <> {}"
        " ORDER BY k.key_id FOR UPDATE OF k",
        key_columns(detail::Columns::info, "k"), s, credits_join(s, "k"),
        static_cast<int>(KeyStatus::revoked));
    // revoke_all narrowed to the keys lock_account locked ($3): a key inserted meanwhile
    // is left as a revoke_all before its insert would have left it.
    revoke_locked = revoke_all_sql(s, info_columns, returning, " AND key_id = ANY($3::uuid[])");
    // A batch of events, one array element each (PgArray), in batch order.
    insert_events = fmt::format(
        "INSERT INTO {}.apikeys_audit_events (event_id, time_ms, account_id, key_id, action,"
        " actor_type, actor_id, actor_detail, reason, before_json, after_json)"
        " SELECT * FROM unnest($1::uuid[], $2::bigint[], $3::uuid[], $4::uuid[],"
        " $5::smallint[], $6::smallint[], $7::text[], $8::text[], $9::text[], $10::text[],"
        " $11::text[])",
        s);
    // $1 the bound, $2 the batch: the $2 oldest events before $1, in the time index's
    // order (which also keeps the planner on that index).
    prune_audit = fmt::format(
        "DELETE FROM {0}.apikeys_audit_events WHERE event_id IN"
        " (SELECT event_id FROM {0}.apikeys_audit_events WHERE time_ms < $1"
        " ORDER BY time_ms LIMIT $2)",
        s);
    // replace_digests_audited: replace_digests, and the keys it rewrote as get() reads
    // them, in batch order.
    replace_digests_keys = fmt::format(
        "WITH {}, changed AS ({} RETURNING {}, k.lineage_id, k.rate_limits, p.i AS batch_i)"
        " SELECT {} FROM changed{} ORDER BY changed.batch_i",
        digest_batch(s), digest_update(s), detail::column_list(detail::Columns::info, "k."),
        key_columns(detail::Columns::info, "changed"), credits_join(s, "changed"));
    // take_credits_audited: $1 lineage, $2 and $3 the periods. The lineage's credits
    // row, locked until the transaction ends, and whether a refill is due on it.
    const RefillSql l("$2", "$3");
    lock_credits = fmt::format(
        "SELECT remaining, refill_amount, refill_interval, refill_mode, refill_cap,"
        " refilled_period, {1} FROM {0}.apikeys_key_credits WHERE lineage_id = $1 FOR UPDATE",
        s, l.due);
    // $1 lineage: its newest key (latest created_at, then greatest key_id), as get() reads it.
    newest_key = fmt::format(
        "SELECT {} FROM {}.apikeys_keys k{} WHERE COALESCE(k.lineage_id, k.key_id) = $1"
        " ORDER BY k.created_at DESC, k.key_id DESC LIMIT 1",
        key_columns(detail::Columns::info, "k"), s, credits_join(s, "k"));
  }

  // The CTEs `batch` (the changes, $1.. $5) and `picked` (the change of each key that
  // matches its digest) of replace_digests.
  static std::string digest_batch(const std::string& s) {
    return fmt::format(
        "batch AS (SELECT id, decode(from_hex, 'hex') AS from_digest, from_pepper,"
        " decode(to_hex, 'hex') AS to_digest, to_pepper, i"
        " FROM unnest($1::uuid[], $2::text[], $3::bigint[], $4::text[], $5::bigint[])"
        " WITH ORDINALITY AS t(id, from_hex, from_pepper, to_hex, to_pepper, i)),"
        " picked AS (SELECT DISTINCT ON (b.id) b.* FROM batch b"
        " JOIN {0}.apikeys_keys k ON k.key_id = b.id AND k.digest = b.from_digest"
        " AND k.pepper_id = b.from_pepper ORDER BY b.id, b.i)",
        s);
  }

  // The compare-and-set UPDATE of replace_digests, over `picked`.
  static std::string digest_update(const std::string& s) {
    return fmt::format(
        "UPDATE {0}.apikeys_keys k SET digest = p.to_digest, pepper_id = p.to_pepper"
        " FROM picked p WHERE k.key_id = p.id AND k.digest = p.from_digest"
        " AND k.pepper_id = p.from_pepper",
        s);
  }

  // revoke_all's statement: $1 account, $2 the time; `filter` narrows the keys it
  // revokes (revoke_all_audited: to those it locked, $3).
  static std::string revoke_all_sql(const std::string& s, const std::string& info_columns,
                                    const std::string& returning, const char* filter) {
    return fmt::format(
        "WITH changed AS (UPDATE {0}.apikeys_keys SET status = {3}, updated_at = $2,"
        " version = version + 1 WHERE account_id = $1 AND status <> {3}{7} RETURNING {4}),"
        " counted AS (SELECT count(*) AS n FROM changed),"
        " bump AS (UPDATE {0}.apikeys_meta SET revision = revision + (SELECT n FROM counted)"
        " WHERE id = 1 AND (SELECT n FROM counted) > 0 RETURNING revision),"
        " numbered AS (SELECT public_key,"
        " row_number() OVER (ORDER BY created_at, key_id) AS i FROM changed),"
        " logged AS (INSERT INTO {0}.apikeys_changes (revision, public_key)"
        " SELECT bump.revision - counted.n + numbered.i, numbered.public_key"
        " FROM bump, counted, numbered WHERE counted.n - numbered.i < {2}"
        " ON CONFLICT (revision) DO UPDATE SET public_key = EXCLUDED.public_key),"
        " pruned AS (DELETE FROM {0}.apikeys_changes"
        " WHERE revision <= (SELECT revision FROM bump) - {2})"
        " SELECT {5} FROM changed{6} ORDER BY changed.created_at DESC, changed.key_id DESC",
        s, info_columns, kChangeLogSize, static_cast<int>(KeyStatus::revoked), returning,
        key_columns(detail::Columns::info, "changed"), credits_join(s, "changed"), filter);
  }

  // replace()'s parameters: $1 key_id, $2 account_id, $3 the expected version, $4.. $12
  // the fields it writes; rotate()'s successor follows.
  static constexpr int kReplaceParamCount = 12;

  // The CTE `changed` of replace and rotate: $1 key_id, $2 account_id, $3 the expected
  // version, $4.. $12 the fields replace() writes.
  static std::string replace_cte(const std::string& s, const std::string& returning) {
    return fmt::format(
        "changed AS (UPDATE {}.apikeys_keys SET title = $4, description = $5, metadata = $6,"
        " scopes = $7, status = $8, expires_at = $9, updated_at = $10, rotated_to = $11,"
        " rate_limits = $12, version = version + 1"
        " WHERE key_id = $1 AND account_id = $2 AND version = $3 RETURNING {})",
        s, returning);
  }

  // "$12::uuid, $13::uuid, ...": one parameter per field from `first` on, each cast to
  // its column's type (an INSERT ... SELECT does not type its parameters by itself).
  static std::string typed_parameters(int first) {
    std::string out;
    int n = first;
    for (const detail::RecordField& f : detail::kRecordFields) {
      if (n > first) out += ", ";
      out += fmt::format("${}::{}", n++, f.pg_type);
    }
    return out;
  }

  // The CTEs that bump the revision and log the key of the `source` CTE's row.
  static std::string log_change(const std::string& s, const char* source) {
    return fmt::format(
        " bump AS (UPDATE {0}.apikeys_meta SET revision = revision + 1 WHERE id = 1 AND"
        " EXISTS (SELECT 1 FROM {1}) RETURNING revision),"
        " logged AS (INSERT INTO {0}.apikeys_changes (revision, public_key)"
        " SELECT bump.revision, {1}.public_key FROM bump, {1}"
        " ON CONFLICT (revision) DO UPDATE SET public_key = EXCLUDED.public_key),"
        " pruned AS (DELETE FROM {0}.apikeys_changes"
        " WHERE revision <= (SELECT revision FROM bump) - {2})",
        s, source, kChangeLogSize);
  }
};

// Prepared statement names (per connection).
constexpr const char* kFind = "apikeys_find";
constexpr const char* kFindForValidation = "apikeys_find_for_validation";
constexpr const char* kList = "apikeys_list";
constexpr const char* kInsert = "apikeys_insert";
constexpr const char* kSetStatus = "apikeys_set_status";
constexpr const char* kRemove = "apikeys_remove";
constexpr const char* kLastUse = "apikeys_last_use";
constexpr const char* kRevision = "apikeys_revision";
constexpr const char* kChanges = "apikeys_changes";
constexpr const char* kGet = "apikeys_get";
constexpr const char* kPageFirst = "apikeys_page_first";
constexpr const char* kPageAfter = "apikeys_page_after";
constexpr const char* kReplace = "apikeys_replace";
constexpr const char* kRotate = "apikeys_rotate";
constexpr const char* kRevokeAll = "apikeys_revoke_all";
constexpr const char* kReplaceDigests = "apikeys_replace_digests";
constexpr const char* kPepperCounts = "apikeys_pepper_counts";
constexpr const char* kTakeCredits = "apikeys_take_credits";
constexpr const char* kCreditsView = "apikeys_credits_view";
constexpr const char* kReturnCredits = "apikeys_return_credits";
constexpr const char* kReturnCreditsChecked = "apikeys_return_credits_checked";
constexpr const char* kDropOrphanCredits = "apikeys_drop_orphan_credits";
constexpr const char* kLockKey = "apikeys_lock_key";
constexpr const char* kLockAccount = "apikeys_lock_account";
constexpr const char* kRevokeLocked = "apikeys_revoke_locked";
constexpr const char* kInsertEvents = "apikeys_insert_events";

[[noreturn]] void corrupt(std::string_view op, const char* what) {
  throw Error(ErrorCode::storage,
              fmt::format("PostgresStore {} failed: corrupt record: {}", op, what));
}

// The rows a command changed (PQcmdTuples), as its reply says.
std::uint64_t rows_changed(PGresult* r, std::string_view op) {
  const char* rows = PQcmdTuples(r);
  std::uint64_t n = 0;
  const char* end = rows + std::strlen(rows);
  const auto [p, ec] = std::from_chars(rows, end, n);
  if (ec != std::errc() || p != end) corrupt(op, "no row count");
  return n;
}

std::int64_t parse_int(const PGresult* r, int row, int col, std::string_view op, const char* what) {
  if (PQgetisnull(r, row, col)) corrupt(op, what);
  const char* s = PQgetvalue(r, row, col);
  const char* end = s + std::strlen(s);
  std::int64_t v = 0;
  const auto [p, ec] = std::from_chars(s, end, v);
  if (ec != std::errc() || p != end) corrupt(op, what);
  return v;
}

[[noreturn]] void corrupt_field(std::string_view op, const detail::RecordField& f,
                                const char* problem) {
  throw Error(ErrorCode::storage,
              fmt::format("PostgresStore {} failed: corrupt record: {} {}", op, f.name, problem));
}

// Decodes the fields of one row (text format), one overload per FieldKind, from column
// `col` on.
struct RowDecoder {
  const PGresult* r = nullptr;
  int row = 0;
  std::string_view op;
  int col = 0;

  const char* value(const detail::RecordField& f, const char* problem) const {
    if (PQgetisnull(r, row, col)) corrupt_field(op, f, problem);
    return PQgetvalue(r, row, col);
  }
  std::int64_t integer(const detail::RecordField& f) {
    const char* text = value(f, "is not an integer");
    const char* end = text + std::strlen(text);
    std::int64_t v = 0;
    const auto [p, ec] = std::from_chars(text, end, v);
    if (ec != std::errc() || p != end) corrupt_field(op, f, "is not an integer");
    ++col;
    return v;
  }

  void operator()(const detail::RecordField& f, Uuid& v) {
    auto id = Uuid::parse(value(f, "is not a UUID"));
    if (!id) corrupt_field(op, f, "is not a UUID");
    v = *id;
    ++col;
  }
  void operator()(const detail::RecordField& f, std::string& v) {
    const char* text = value(f, "is null");
    v.assign(text, static_cast<std::size_t>(PQgetlength(r, row, col)));
    ++col;
  }
  void operator()(const detail::RecordField& f, std::array<std::uint8_t, 32>& v) {
    // bytea in text form is "\x" and hex (bytea_output = hex, set per session).
    const char* text = value(f, "is not 32 bytes");
    if (PQgetlength(r, row, col) != 2 + 64) corrupt_field(op, f, "is not 32 bytes");
    const bool hex = text[0] == '\\' && text[1] == 'x' &&
                     detail::hex_decode(std::string_view(text + 2, 2 * v.size()), v.data());
    if (!hex) corrupt_field(op, f, "is not hex");
    ++col;
  }
  void operator()(const detail::RecordField& f, std::uint32_t& v) {
    const std::int64_t n = integer(f);
    if (n < 0 || n > std::numeric_limits<std::uint32_t>::max()) {
      corrupt_field(op, f, "out of range");
    }
    v = static_cast<std::uint32_t>(n);
  }
  void operator()(const detail::RecordField& f, KeyStatus& v) {
    const std::int64_t n = integer(f);
    if (n != 0 && n != 1 && n != 2) corrupt(op, "unknown status");
    v = static_cast<KeyStatus>(n);
  }
  void operator()(const detail::RecordField& f, TimePoint& v) { v = from_unix_millis(integer(f)); }
  void operator()(const detail::RecordField& f, std::optional<TimePoint>& v) {
    if (PQgetisnull(r, row, col)) {
      v.reset();
      ++col;
      return;
    }
    v = from_unix_millis(integer(f));
  }
  void operator()(const detail::RecordField& f, std::vector<std::string>& v) {
    const char* text = value(f, "is null");
    v = detail::split_scopes(
        std::string_view(text, static_cast<std::size_t>(PQgetlength(r, row, col))));
    ++col;
  }
  void operator()(const detail::RecordField& f, std::uint64_t& v) {
    const std::int64_t n = integer(f);
    if (n < 1) corrupt_field(op, f, "out of range");
    v = static_cast<std::uint64_t>(n);
  }
  void operator()(const detail::RecordField& f, std::optional<Uuid>& v) {
    if (PQgetisnull(r, row, col)) {
      v.reset();
      ++col;
      return;
    }
    Uuid id;
    (*this)(f, id);
    v = id;
  }
};

// The rate limits as stored: format_rate_limit() specs joined by ';'.
std::string join_rate_limits(const std::vector<RateLimit>& limits) {
  std::string out;
  for (const RateLimit& limit : limits) {
    if (!out.empty()) out += ';';
    out += format_rate_limit(limit);
  }
  return out;
}

// A non-negative integer column of the credits, at most `max`.
std::uint64_t credit_value(const PGresult* r, int row, int col, std::string_view op,
                           const char* what, std::int64_t max) {
  const std::int64_t v = parse_int(r, row, col, op, what);
  if (v < 0 || v > max) corrupt(op, what);
  return static_cast<std::uint64_t>(v);
}

// PostgresStore's own key columns and the lineage's credits (key_columns()), from
// column `col` on. Limits that do not parse fail the read: a key is never shown, nor
// admitted, without the limits it was given.
void read_extras(const PGresult* r, int row, int col, std::string_view op, KeyInfo& info) {
  if (PQnfields(r) < col + kExtraColumnCount + kCreditColumnCount) {
    corrupt(op, "missing columns");
  }
  info.lineage_id = Uuid{};
  if (!PQgetisnull(r, row, col)) {
    auto id = Uuid::parse(PQgetvalue(r, row, col));
    if (!id) corrupt(op, "lineage_id is not a UUID");
    info.lineage_id = *id;
  }
  ++col;
  if (PQgetisnull(r, row, col)) corrupt(op, "rate_limits is null");
  const std::string_view limits(PQgetvalue(r, row, col),
                                static_cast<std::size_t>(PQgetlength(r, row, col)));
  info.rate_limits.clear();
  for (std::size_t at = 0; at < limits.size();) {
    std::size_t end = limits.find(';', at);
    if (end == std::string_view::npos) end = limits.size();
    try {
      info.rate_limits.push_back(parse_rate_limit(limits.substr(at, end - at)));
    } catch (const std::exception&) {
      corrupt(op, "rate_limits do not parse");
    }
    at = end + 1;
    if (end + 1 == limits.size()) corrupt(op, "rate_limits do not parse");  // a trailing ';'
  }
  // Every rule a key's limits follow (count, unique names, sorted), as when written.
  try {
    std::vector<RateLimit> checked = normalize_rate_limits(info.rate_limits);
    if (checked != info.rate_limits) corrupt(op, "rate_limits are not in order");
  } catch (const Error& e) {
    if (e.code() != ErrorCode::invalid_argument) throw;
    corrupt(op, "rate_limits break the rules of a key's limits");
  }
  ++col;
  info.credits.reset();
  if (PQgetisnull(r, row, col)) return;  // the lineage has no credits
  constexpr auto kMax = static_cast<std::int64_t>(KeyPolicyLimits::kMaxCredits);
  Credits c;
  c.remaining = credit_value(r, row, col, op, "credits remaining out of range", kMax);
  if (!PQgetisnull(r, row, col + 1)) {
    CreditRefill refill;
    refill.amount = credit_value(r, row, col + 1, op, "refill amount out of range", kMax);
    const std::uint64_t interval = credit_value(r, row, col + 2, op, "unknown refill interval", 1);
    const std::uint64_t mode = credit_value(r, row, col + 3, op, "unknown refill mode", 1);
    refill.interval = static_cast<RefillInterval>(interval);
    refill.mode = static_cast<RefillMode>(mode);
    refill.cap = credit_value(r, row, col + 4, op, "refill cap out of range", kMax);
    c.refill = refill;
  }
  c.refilled_period = parse_int(r, row, col + 5, op, "refilled_period is not an integer");
  info.credits = c;
}

// The KeyInfo fields, in table order, then the extras (reads, and every write's result).
KeyInfo read_info(const PGresult* r, int row, std::string_view op) {
  if (PQnfields(r) < kInfoColumnCount) corrupt(op, "missing columns");
  KeyInfo info;
  detail::for_each_info_field(info, RowDecoder{r, row, op});
  read_extras(r, row, kInfoColumnCount, op, info);
  return info;
}

// The fields of `which` (Columns::all or Columns::verdict), in table order, then the
// extras: find_sql()'s row.
KeyRecord read_found(const PGresult* r, int row, std::string_view op, detail::Columns which) {
  const auto count = static_cast<int>(detail::column_count(which));
  if (PQnfields(r) < count) corrupt(op, "missing columns");
  KeyRecord record;
  if (which == detail::Columns::verdict) {
    detail::for_each_verdict_field(record, RowDecoder{r, row, op});
  } else {
    detail::for_each_field(record, RowDecoder{r, row, op});
  }
  read_extras(r, row, count, op, record.info);
  return record;
}

// The parameters of an INSERT of every field, in table order, then lineage_id and
// rate_limits (and, for insert(), the credits it creates: Statements::insert): text,
// except the digest's raw bytes (binary). Points into `record` and into its own strings:
// both must outlive the call that sends them.
class InsertParams {
 public:
  static constexpr std::size_t kMaxParams =
      detail::kFieldCount + kExtraColumnCount + kCreditColumnCount;

  explicit InsertParams(const KeyRecord& record, const char* op = "insert") : op_(op) {
    detail::for_each_field(record, *this);
    const KeyInfo& info = record.info;
    if (info.lineage_id.is_nil()) {
      add(nullptr, 0, 0);  // NULL: the key's own id
    } else {
      own(info.lineage_id.to_string());
    }
    own(join_rate_limits(info.rate_limits));
  }

  // Appends the credits parameters of Statements::insert: the record's credits when it
  // starts its lineage, else NULLs (none created).
  void add_credits(const KeyRecord& record) {
    const KeyInfo& info = record.info;
    if (!info.credits || info.lineage() != info.key_id) {
      for (int i = 0; i < kCreditColumnCount; ++i) add(nullptr, 0, 0);
      return;
    }
    const Credits& c = *info.credits;
    number(std::min(c.remaining, KeyPolicyLimits::kMaxCredits));
    if (c.refill) {
      number(std::min(c.refill->amount, KeyPolicyLimits::kMaxCredits));
      own(std::to_string(static_cast<int>(c.refill->interval)));
      own(std::to_string(static_cast<int>(c.refill->mode)));
      number(std::min(c.refill->cap, KeyPolicyLimits::kMaxCredits));
    } else {
      add(nullptr, 0, 0);
      own("0");
      own("0");
      own("0");
    }
    own(std::to_string(c.refilled_period));
  }

  [[nodiscard]] int count() const noexcept { return static_cast<int>(n_); }
  InsertParams(const InsertParams&) = delete;
  InsertParams& operator=(const InsertParams&) = delete;

  void operator()(const detail::RecordField&, const Uuid& v) { own(v.to_string()); }
  void operator()(const detail::RecordField& f, const std::string& v) {
    // Text parameters end at a NUL: refuse rather than store a shorter string.
    if (v.find('\0') != std::string::npos) {
      throw Error(ErrorCode::storage,
                  fmt::format("PostgresStore {} failed: {} contains a NUL byte, which "
                              "PostgreSQL text cannot hold",
                              op_, f.name));
    }
    add(v.c_str(), 0, 0);
  }
  void operator()(const detail::RecordField&, const std::array<std::uint8_t, 32>& v) {
    add(reinterpret_cast<const char*>(v.data()), static_cast<int>(v.size()), 1);
  }
  void operator()(const detail::RecordField&, std::uint32_t v) { own(std::to_string(v)); }
  void operator()(const detail::RecordField&, KeyStatus v) {
    own(std::to_string(static_cast<int>(v)));
  }
  void operator()(const detail::RecordField&, TimePoint v) {
    own(std::to_string(to_unix_millis(v)));
  }
  void operator()(const detail::RecordField&, const std::optional<TimePoint>& v) {
    if (v) {
      own(std::to_string(to_unix_millis(*v)));
    } else {
      add(nullptr, 0, 0);  // NULL
    }
  }
  void operator()(const detail::RecordField&, const std::vector<std::string>& v) {
    own(detail::join_scopes(v));
  }
  void operator()(const detail::RecordField& f, std::uint64_t v) {
    if (v > static_cast<std::uint64_t>(std::numeric_limits<std::int64_t>::max())) {
      throw Error(ErrorCode::storage,
                  fmt::format("PostgresStore {} failed: {} is out of range", op_, f.name));
    }
    own(std::to_string(v));
  }
  void operator()(const detail::RecordField& f, const std::optional<Uuid>& v) {
    if (v) {
      (*this)(f, *v);
    } else {
      add(nullptr, 0, 0);  // NULL
    }
  }

  const char* const* values() const noexcept { return values_.data(); }
  const int* lengths() const noexcept { return lengths_.data(); }
  const int* formats() const noexcept { return formats_.data(); }

 private:
  void add(const char* value, int length, int format) {
    values_[n_] = value;
    lengths_[n_] = length;
    formats_[n_] = format;
    ++n_;
  }
  void own(std::string text) {
    owned_[n_] = std::move(text);
    add(owned_[n_].c_str(), 0, 0);
  }

  void number(std::uint64_t v) { own(std::to_string(v)); }

  const char* op_;
  std::size_t n_ = 0;
  std::array<std::string, kMaxParams> owned_;
  std::array<const char*, kMaxParams> values_{};
  std::array<int, kMaxParams> lengths_{};
  std::array<int, kMaxParams> formats_{};
};

// The parameters of replace() ($1 to $12 of Statements::replace_cte), then, for
// rotate(), those of the successor's INSERT. Text, NULL for an absent optional. Points
// into its own strings and into `next` (and the successor's InsertParams): they must
// outlive the call that sends them.
class ReplaceParams {
 public:
  ReplaceParams(const char* op, const Uuid& account_id, const KeyInfo& next,
                std::uint64_t expected_version)
      : op_(op) {
    own(next.key_id.to_string());
    own(account_id.to_string());
    own(std::to_string(expected_version));
    text("title", next.title);
    text("description", next.description);
    text("metadata", next.metadata);
    std::string scopes = detail::join_scopes(next.scopes);
    check_text("scopes", scopes);
    own(std::move(scopes));
    own(std::to_string(static_cast<int>(next.status)));
    if (next.expires_at) {
      own(std::to_string(to_unix_millis(*next.expires_at)));
    } else {
      values_.push_back(nullptr);
    }
    own(std::to_string(to_unix_millis(next.updated_at)));
    if (next.rotated_to) {
      own(next.rotated_to->to_string());
    } else {
      values_.push_back(nullptr);
    }
    own(join_rate_limits(next.rate_limits));
    lengths_.assign(values_.size(), 0);
    formats_.assign(values_.size(), 0);
  }
  ReplaceParams(const ReplaceParams&) = delete;
  ReplaceParams& operator=(const ReplaceParams&) = delete;

  // Appends the successor's INSERT parameters (rotate).
  void append(const InsertParams& insert) {
    const auto n = static_cast<std::size_t>(insert.count());
    values_.insert(values_.end(), insert.values(), insert.values() + n);
    lengths_.insert(lengths_.end(), insert.lengths(), insert.lengths() + n);
    formats_.insert(formats_.end(), insert.formats(), insert.formats() + n);
  }

  [[nodiscard]] int count() const noexcept { return static_cast<int>(values_.size()); }
  [[nodiscard]] const char* const* values() const noexcept { return values_.data(); }
  [[nodiscard]] const int* lengths() const noexcept { return lengths_.data(); }
  [[nodiscard]] const int* formats() const noexcept { return formats_.data(); }

 private:
  void own(std::string v) {
    owned_.push_back(std::move(v));  // a deque: earlier strings stay where they are
    values_.push_back(owned_.back().c_str());
  }
  void text(const char* name, const std::string& v) {
    check_text(name, v);
    values_.push_back(v.c_str());
  }
  // Text parameters end at a NUL: refuse rather than store a shorter string.
  void check_text(const char* name, const std::string& v) const {
    if (v.find('\0') != std::string::npos) {
      throw Error(ErrorCode::storage,
                  fmt::format("PostgresStore {} failed: {} contains a NUL byte, which "
                              "PostgreSQL text cannot hold",
                              op_, name));
    }
  }

  const char* op_;
  std::deque<std::string> owned_;
  std::vector<const char*> values_;
  std::vector<int> lengths_;
  std::vector<int> formats_;
};

std::optional<KeyInfo> single_row(const PgResult& r, std::string_view op) {
  if (PQntuples(r.get()) == 0) return std::nullopt;
  return read_info(r.get(), 0, op);
}

// Every row of a result of keys, in order.
std::vector<KeyInfo> all_rows(const PgResult& r, std::string_view op) {
  std::vector<KeyInfo> out;
  const int n = PQntuples(r.get());
  out.reserve(static_cast<std::size_t>(n));
  for (int i = 0; i < n; ++i) out.push_back(read_info(r.get(), i, op));
  return out;
}

// A PostgreSQL array literal ("{a,b}") built one element at a time: text elements
// quoted and escaped, so that any text (commas, quotes, backslashes, "NULL") comes
// back as it was given.
class PgArray {
 public:
  // An element that needs no quoting: a UUID or a number.
  void plain(std::string_view v) {
    separate();
    text_ += v;
  }
  // Text parameters end at a NUL: refuse rather than store a shorter string.
  void quoted(std::string_view v, std::string_view op, const char* name) {
    if (v.find('\0') != std::string_view::npos) {
      throw Error(ErrorCode::storage,
                  fmt::format("PostgresStore {} failed: {} contains a NUL byte, which "
                              "PostgreSQL text cannot hold",
                              op, name));
    }
    separate();
    text_ += '"';
    for (const char ch : v) {
      if (ch == '"' || ch == '\\') text_ += '\\';
      text_ += ch;
    }
    text_ += '"';
  }
  // The literal. REQUIRES: called once, after the last element.
  const char* close() {
    text_ += '}';
    return text_.c_str();
  }

 private:
  void separate() {
    if (text_.size() > 1) text_ += ',';
  }
  std::string text_ = "{";
};

// A credits row's columns from `col` on: remaining, refill_amount, refill_interval,
// refill_mode, refill_cap, refilled_period.
Credits read_credits(const PGresult* r, int col, const char* op) {
  constexpr auto kMax = static_cast<std::int64_t>(KeyPolicyLimits::kMaxCredits);
  Credits cr;
  cr.remaining = credit_value(r, 0, col, op, "credits remaining out of range", kMax);
  if (!PQgetisnull(r, 0, col + 1)) {
    CreditRefill refill;
    refill.amount = credit_value(r, 0, col + 1, op, "refill amount out of range", kMax);
    refill.interval =
        static_cast<RefillInterval>(credit_value(r, 0, col + 2, op, "unknown refill interval", 1));
    refill.mode =
        static_cast<RefillMode>(credit_value(r, 0, col + 3, op, "unknown refill mode", 1));
    refill.cap = credit_value(r, 0, col + 4, op, "refill cap out of range", kMax);
    cr.refill = refill;
  }
  cr.refilled_period = parse_int(r, 0, col + 5, op, "refilled_period is not an integer");
  return cr;
}

// take_credits()'s arguments as its statements take them.
struct TakeArgs {
  std::uint64_t min;
  std::string lineage, low, high, month, day;

  TakeArgs(const Uuid& lineage_id, std::uint64_t min_credits, std::uint64_t max_credits,
           TimePoint now)
      : min(min_credits),
        lineage(lineage_id.to_string()),
        low(clamp_text(min_credits)),
        high(clamp_text(std::max(min_credits, max_credits))),
        month(std::to_string(refill_period(RefillInterval::monthly, now))),
        day(std::to_string(refill_period(RefillInterval::daily, now))) {}

  static std::string clamp_text(std::uint64_t v) {
    constexpr auto kMax = static_cast<std::uint64_t>(INT64_MAX);
    return std::to_string(v > kMax ? kMax : v);
  }
};

// replace_digests()'s five text arrays, one element per change, in batch order: key
// ids, `from` digests (hex) and pepper ids, `to` digests and pepper ids. Hex and decimal
// digits and UUIDs need no quoting inside an array literal.
class DigestArrays {
 public:
  explicit DigestArrays(const std::vector<DigestChange>& changes) {
    for (std::string& a : arrays_) a = "{";
    std::array<char, 64> hex{};
    for (std::size_t i = 0; i < changes.size(); ++i) {
      const DigestChange& change = changes[i];
      if (i != 0) {
        for (std::string& a : arrays_) a += ',';
      }
      arrays_[0] += change.key_id.to_string();
      detail::hex_encode(change.from.bytes.data(), change.from.bytes.size(), hex.data());
      arrays_[1].append(hex.data(), hex.size());
      arrays_[2] += std::to_string(change.from.pepper_id);
      detail::hex_encode(change.to.bytes.data(), change.to.bytes.size(), hex.data());
      arrays_[3].append(hex.data(), hex.size());
      arrays_[4] += std::to_string(change.to.pepper_id);
    }
    for (std::size_t i = 0; i < arrays_.size(); ++i) {
      arrays_[i] += '}';
      values_[i] = arrays_[i].c_str();
    }
  }
  DigestArrays(const DigestArrays&) = delete;
  DigestArrays& operator=(const DigestArrays&) = delete;

  [[nodiscard]] const char* const* values() const noexcept { return values_.data(); }
  static constexpr int kCount = 5;

 private:
  std::array<std::string, kCount> arrays_;
  std::array<const char*, kCount> values_{};
};

// The events of one audited write, in the order its ChangeAudit built them. Remembers
// an exception the ChangeAudit threw, so that the caller gets it as it was, not as the
// Error(storage) that Impl::run() makes of anything that is not an apikeys::Error.
class EventBatch {
 public:
  explicit EventBatch(const ChangeAudit& audit) : audit_(audit) {}

  // audit.event(before, after), kept when it is an event.
  void add(const KeyInfo* before, const KeyInfo* after) {
    try {
      if (std::optional<AuditEvent> e = audit_.event(before, after)) {
        events_.push_back(std::move(*e));
      }
    } catch (...) {
      failure_ = std::current_exception();
      throw;
    }
  }
  [[nodiscard]] const std::vector<AuditEvent>& events() const noexcept { return events_; }
  // A new attempt starts with no events.
  void clear() noexcept {
    events_.clear();
    failure_ = nullptr;
  }
  // Rethrows what the ChangeAudit threw, if it threw.
  void rethrow_failure() const {
    if (failure_) std::rethrow_exception(failure_);
  }

 private:
  const ChangeAudit& audit_;
  std::vector<AuditEvent> events_;
  std::exception_ptr failure_;
};

constexpr auto kMaxVersion = static_cast<std::uint64_t>(std::numeric_limits<std::int64_t>::max());

bool valid_schema_name(std::string_view s) {
  if (s.empty() || s.size() > 63) return false;
  if (s[0] >= '0' && s[0] <= '9') return false;
  return std::all_of(s.begin(), s.end(), [](char c) {
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '_';
  });
}

}  // namespace

struct PostgresStore::Impl {
  // conninfo is copied once, straight into its member (a by-value parameter moved in
  // would leave a short string's bytes behind in the parameter).
  Impl(const std::string& ci, PostgresStoreOptions o)  // NOLINT(modernize-pass-by-value)
      : conninfo(ci),
        options(std::move(o)),
        quoted_schema('"' + options.schema + '"'),
        sql(quoted_schema) {
    idle.reserve(pool_limit());  // see ~Lease
  }
  // The connection string may hold a password. (libpq wipes its own copy in each
  // PGconn when the connection closes; the pooled ones close after this, as members.)
  ~Impl() { detail::wipe(conninfo); }
  Impl(const Impl&) = delete;
  Impl& operator=(const Impl&) = delete;

  std::string conninfo;  // Not changed after construction, but wiped by ~Impl.
  const PostgresStoreOptions options;
  const std::string quoted_schema;
  const Statements sql;

  detail::Mutex mu;
  detail::CondVar cv;
  // Capacity reserved up front for every connection the pool may open: returning one
  // (in ~Lease) must not allocate.
  std::vector<std::unique_ptr<PgConnection>> idle APIKEYS_GUARDED_BY(mu);
  std::size_t open APIKEYS_GUARDED_BY(mu) = 0;  // idle + leased, at most pool_limit()

  [[nodiscard]] std::size_t pool_limit() const noexcept {
    return std::max<std::size_t>(1, options.pool_size);
  }

  [[nodiscard]] Deadline statement_deadline() const {
    return SteadyClock::now() + options.statement_timeout;
  }

  // A new connection with the session settings made and (when `prepared`) the
  // statements prepared: they name the tables, so not before the migration.
  std::unique_ptr<PgConnection> connect(bool prepared = true) {
    auto c = std::make_unique<PgConnection>(conninfo, SteadyClock::now() + options.connect_timeout);
    const auto t = std::max<std::int64_t>(1, options.statement_timeout.count());
    const Deadline d = statement_deadline();
    // The server gives up on a statement, or on waiting for a lock, before the client
    // does, so a slow statement is reported as a timeout, not a lost connection.
    c->exec("connect",
            fmt::format("SET statement_timeout = {0}; SET lock_timeout = {0};"
                        " SET idle_in_transaction_session_timeout = {1};"
                        " SET bytea_output = 'hex'",
                        std::max<std::int64_t>(1, t - t / 10), t * 2),
            d);
    if (!prepared) return c;
    c->prepare("connect", kFind, sql.find, d);
    c->prepare("connect", kFindForValidation, sql.find_for_validation, d);
    c->prepare("connect", kList, sql.list, d);
    c->prepare("connect", kInsert, sql.insert, d);
    c->prepare("connect", kSetStatus, sql.set_status, d);
    c->prepare("connect", kRemove, sql.remove, d);
    c->prepare("connect", kLastUse, sql.last_use, d);
    c->prepare("connect", kRevision, sql.revision, d);
    c->prepare("connect", kChanges, sql.changes, d);
    c->prepare("connect", kGet, sql.get, d);
    c->prepare("connect", kPageFirst, sql.page_first, d);
    c->prepare("connect", kPageAfter, sql.page_after, d);
    c->prepare("connect", kReplace, sql.replace, d);
    c->prepare("connect", kRotate, sql.rotate, d);
    c->prepare("connect", kRevokeAll, sql.revoke_all, d);
    c->prepare("connect", kReplaceDigests, sql.replace_digests, d);
    c->prepare("connect", kPepperCounts, sql.pepper_counts, d);
    c->prepare("connect", kTakeCredits, sql.take_credits, d);
    c->prepare("connect", kCreditsView, sql.credits_view, d);
    c->prepare("connect", kReturnCredits, sql.return_credits, d);
    c->prepare("connect", kReturnCreditsChecked, sql.return_credits_checked, d);
    c->prepare("connect", kDropOrphanCredits, sql.drop_orphan_credits, d);
    c->prepare("connect", kLockKey, sql.lock_key, d);
    c->prepare("connect", kLockAccount, sql.lock_account, d);
    c->prepare("connect", kRevokeLocked, sql.revoke_locked, d);
    c->prepare("connect", kInsertEvents, sql.insert_events, d);
    return c;
  }

  // A connection checked out of the pool for one attempt. With `check_idle`, a pooled
  // connection is first polled for a close (or anything else) the server sent while it
  // sat idle: one system call, which an attempt that may be retried (run()'s `retry`)
  // skips, since a lost pooled connection is retried on a fresh one anyway.
  class Lease {
   public:
    Lease(Impl& impl, bool check_idle) : impl_(impl) {
      const Deadline wait_until = SteadyClock::now() + impl_.options.pool_wait;
      detail::MutexLock lock(impl_.mu);
      for (;;) {
        while (!impl_.idle.empty()) {
          std::unique_ptr<PgConnection> c = std::move(impl_.idle.back());
          impl_.idle.pop_back();
          if (!check_idle || c->healthy()) {
            conn_ = std::move(c);
            pooled_ = true;
            return;
          }
          --impl_.open;  // dead (server restarted): closed below, outside the lock
          lock.unlock();
          c.reset();
          lock.lock();
        }
        if (impl_.open < impl_.pool_limit()) break;
        if (!impl_.cv.wait_until(impl_.mu, wait_until) && impl_.idle.empty() &&
            impl_.open >= impl_.options.pool_size) {
          throw Error(ErrorCode::busy, "PostgresStore: no free connection within pool_wait");
        }
      }
      ++impl_.open;
      lock.unlock();
      try {
        conn_ = impl_.connect();  // network I/O: never under the pool mutex
      } catch (...) {
        lock.lock();
        --impl_.open;
        impl_.cv.signal();
        throw;
      }
    }
    ~Lease() {
      // A connection left inside a transaction or with a command in flight (a ROLLBACK
      // given up at its deadline after the call failed) would fail whatever runs on it
      // next: closed instead, outside the lock.
      if (conn_ && !conn_->reusable()) conn_.reset();
      detail::MutexLock lock(impl_.mu);
      if (conn_) {
        // Cannot allocate, so cannot throw (which in a destructor is std::terminate,
        // under memory pressure exactly): idle.size() < open <= pool_limit(), the
        // capacity reserved in Impl's constructor, and drop_idle() keeps it.
        impl_.idle.push_back(std::move(conn_));
      } else {
        --impl_.open;
      }
      impl_.cv.signal();
    }
    Lease(const Lease&) = delete;
    Lease& operator=(const Lease&) = delete;

    PgConnection& operator*() const noexcept { return *conn_; }
    PgConnection* operator->() const noexcept { return conn_.get(); }
    // The connection is broken: close it instead of returning it to the pool.
    void discard() noexcept { conn_.reset(); }
    // True when the connection came from the pool (it may have died while idle),
    // false when this lease opened it.
    bool pooled() const noexcept { return pooled_; }

   private:
    Impl& impl_;
    std::unique_ptr<PgConnection> conn_;
    bool pooled_ = false;
  };

  // Closes every idle connection: after one was found dead, the others (opened before
  // the same restart) are dead too. Checking each instead would keep the healthy ones,
  // but a connection that died without a FIN (a load balancer's idle timeout, a
  // failover) passes the check and fails its next call; closed, the retry and the
  // calls after it run on fresh connections. One at a time, each closed outside the lock, and
  // without a second vector: swapping one in would take idle's reserved capacity away
  // (see ~Lease), and making one could fail.
  void drop_idle() noexcept APIKEYS_EXCLUDES(mu) {
    std::size_t left = 0;
    {
      detail::MutexLock lock(mu);
      left = idle.size();
    }
    for (; left > 0; --left) {
      std::unique_ptr<PgConnection> dead;
      {
        detail::MutexLock lock(mu);
        if (idle.empty()) break;
        dead = std::move(idle.back());
        idle.pop_back();
        --open;
      }
    }  // each `dead` closes here, outside the lock
    cv.signal_all();
  }

  // Runs f(connection) once; if the connection turns out to be lost (not timed out)
  // and it came from the pool (the server may have ended it while it sat idle), once
  // more on a fresh one when `retry` allows it. The first attempt of a retried call
  // skips the pool's idle check (Lease): what it would catch, the retry covers.
  template <typename F>
  auto run(std::string_view op, bool retry, F&& f) -> decltype(f(std::declval<PgConnection&>())) {
    for (int attempt = 0;; ++attempt) {
      Lease c(*this, !retry || attempt > 0);
      try {
        return f(*c);
      } catch (const pg::ConnectionLost& e) {
        const bool pooled = c.pooled();
        c.discard();
        drop_idle();
        if (!retry || attempt > 0 || !pooled || e.timed_out()) throw Error(e.code(), e.what());
      } catch (const Error&) {
        throw;
      } catch (const std::exception& e) {
        throw Error(ErrorCode::storage, fmt::format("PostgresStore {} failed: {}", op, e.what()));
      }
    }
  }

  // find() and find_for_validation(): the prepared `statement` (find_sql(s, which)),
  // whose row, a decoy's too, read_found() decodes.
  std::optional<KeyRecord> find(std::string_view public_key, const char* statement,
                                detail::Columns which) {
    // Text parameters end at a NUL: such a key would match a shorter one. No key has one.
    if (public_key.find('\0') != std::string_view::npos) return std::nullopt;
    const std::string key(public_key);
    return run("find", true, [&](PgConnection& c) -> std::optional<KeyRecord> {
      const char* values[] = {key.c_str()};
      PgResult r =
          c.exec_prepared("find", statement, 1, values, nullptr, nullptr, statement_deadline());
      if (PQntuples(r.get()) == 0) return std::nullopt;  // an empty table
      const int flag = PQnfields(r.get()) - 1;
      if (std::string_view(PQgetvalue(r.get(), 0, flag)) != "t") {
        // A decoy: decoded like the key's row, then dropped; a damaged decoy is no error.
        ++detail::decoy_reads();
        try {
          (void)read_found(r.get(), 0, "find", which);
        } catch (const Error&) {
        }
        return std::nullopt;
      }
      return read_found(r.get(), 0, "find", which);
    });
  }

  // Runs f(connection) between BEGIN and COMMIT, once (not retried: after a lost reply
  // the COMMIT may have happened). Any throw rolls the transaction back (a lost
  // connection is rolled back by the server) and is rethrown.
  template <typename F>
  auto transaction(std::string_view op, F&& f) -> decltype(f(std::declval<PgConnection&>())) {
    return run(op, false, [&](PgConnection& c) {
      c.exec(op, "BEGIN", statement_deadline());
      try {
        auto result = f(c);
        c.exec(op, "COMMIT", statement_deadline());
        return result;
      } catch (const pg::ConnectionLost&) {
        throw;  // the connection is closed: the server rolls back
      } catch (...) {
        try {
          c.exec(op, "ROLLBACK", statement_deadline());
        } catch (...) {
        }
        throw;
      }
    });
  }

  // An audited write: f(connection, batch) makes the change and adds each key's event
  // to the batch as it learns the key's states; the events are written in the same
  // transaction, before it commits. A throw, from the ChangeAudit or anything else,
  // commits nothing; what the ChangeAudit threw reaches the caller as it was thrown.
  template <typename F>
  auto audited(std::string_view op, const ChangeAudit& audit, F&& f)
      -> decltype(f(std::declval<PgConnection&>(), std::declval<EventBatch&>())) {
    EventBatch batch(audit);
    try {
      return transaction(op, [&](PgConnection& c) {
        batch.clear();
        auto result = f(c, batch);
        insert_events(c, op, batch.events());
        return result;
      });
    } catch (...) {
      batch.rethrow_failure();
      throw;
    }
  }

  // Writes `events` in the connection's open transaction: one statement for them all.
  void insert_events(PgConnection& c, std::string_view op,
                     const std::vector<AuditEvent>& events) const {
    if (events.empty()) return;
    std::array<PgArray, 11> a;
    for (const AuditEvent& e : events) {
      a[0].plain(e.event_id.to_string());
      a[1].plain(std::to_string(to_unix_millis(e.time)));
      a[2].plain(e.account_id.to_string());
      a[3].plain(e.key_id.to_string());
      a[4].plain(std::to_string(static_cast<int>(e.action)));
      a[5].plain(std::to_string(static_cast<int>(e.context.actor.type)));
      a[6].quoted(e.context.actor.id, op, "the actor id");
      a[7].quoted(e.context.actor.detail, op, "the actor detail");
      a[8].quoted(e.context.reason, op, "the reason");
      a[9].quoted(e.before, op, "the event's before");
      a[10].quoted(e.after, op, "the event's after");
    }
    std::array<const char*, 11> values{};
    for (std::size_t i = 0; i < a.size(); ++i) values[i] = a[i].close();
    (void)c.exec_prepared(op, kInsertEvents, static_cast<int>(values.size()), values.data(),
                          nullptr, nullptr, statement_deadline());
  }

  // Key `values[0]` of account `values[1]` through the prepared statement `name`
  // (kGet, or kLockKey to lock its row until the transaction ends).
  std::optional<KeyInfo> get_on(PgConnection& c, std::string_view op, const char* name,
                                const char* const* key_and_account) const {
    PgResult r =
        c.exec_prepared(op, name, 2, key_and_account, nullptr, nullptr, statement_deadline());
    return single_row(r, op);
  }

  // The compare-and-set of replace() (kReplace) or rotate() (kRotate, the successor's
  // insert with it). No row changed: reads the key afresh (a new statement, so a new
  // snapshot: a write that made ours miss has committed) to tell a conflict (the key as
  // it now is) from not_found.
  WriteResult compare_and_set(PgConnection& c, const char* op, const char* name,
                              const ReplaceParams& params, std::uint64_t expected_version) const {
    // No stored version is that large: nothing can match.
    if (expected_version <= kMaxVersion) {
      PgResult r = c.exec_prepared(op, name, params.count(), params.values(), params.lengths(),
                                   params.formats(), statement_deadline());
      if (auto key = single_row(r, op)) return WriteResult{WriteOutcome::applied, std::move(*key)};
    }
    WriteResult out;
    if (auto key = get_on(c, op, kGet, params.values())) {
      out.outcome = WriteOutcome::conflict;
      out.key = std::move(*key);
    }
    return out;
  }

  // replace_audited() and rotate_audited(): the key locked and read, the compare-and-set,
  // and when it applied the key's event, then (rotate) the successor's as stored.
  WriteResult audited_compare_and_set(const char* op, const char* name, const ReplaceParams& params,
                                      std::uint64_t expected_version, const ChangeAudit& audit,
                                      const KeyRecord* successor) {
    return audited(op, audit, [&](PgConnection& c, EventBatch& batch) {
      const std::optional<KeyInfo> before = get_on(c, op, kLockKey, params.values());
      if (!before) return WriteResult{};  // not_found: nothing locked, nothing written
      WriteResult result = compare_and_set(c, op, name, params, expected_version);
      if (result.outcome != WriteOutcome::applied) return result;
      // The write leaves the credits alone; a take that committed since they were read
      // must not look like a change this write made.
      result.key.credits = before->credits;
      batch.add(&*before, &result.key);
      if (successor != nullptr) {
        const std::string id = successor->info.key_id.to_string();
        const char* key_and_account[] = {id.c_str(), params.values()[1]};
        const std::optional<KeyInfo> stored = get_on(c, op, kGet, key_and_account);
        if (!stored) corrupt(op, "the successor was not stored");
        batch.add(nullptr, &*stored);
      }
      return result;
    });
  }

  // The DELETE of remove(), given the key id and the account id: the key as it was, with
  // its lineage's credits, or nullopt.
  std::optional<KeyInfo> remove_on(PgConnection& c, const char* const* key_and_account) const {
    PgResult r = c.exec_prepared("remove", kRemove, 2, key_and_account, nullptr, nullptr,
                                 statement_deadline());
    return single_row(r, "remove");
  }

  // After a committed remove(): the lineage's credits go with its last key.
  void drop_orphan_credits(const std::optional<KeyInfo>& removed) {
    if (!removed || !removed->credits) return;
    // Idempotent, so retried; a failure here leaves a credits row no key reaches (a
    // lineage id is its first key's random id, never given again): harmless.
    const std::string lineage = removed->lineage().to_string();
    const char* lineage_value[] = {lineage.c_str()};
    try {
      run("remove", true, [&](PgConnection& c) {
        (void)c.exec_prepared("remove", kDropOrphanCredits, 1, lineage_value, nullptr, nullptr,
                              statement_deadline());
        return 0;
      });
    } catch (...) {
      // The key is gone, as the caller asked; the orphan row costs only its bytes.
    }
  }

  // change_credits() inside the caller's transaction. `stored` is set to the lineage's
  // credits as they were (locked), nullopt when it had none.
  std::optional<KeyInfo> change_credits_on(PgConnection& c, const std::string& key,
                                           const std::string& account, const CreditsChange& change,
                                           std::optional<Credits>& stored);

  // take_credits() on `c`: the take, and when it took nothing the balance (with the
  // refill due written). With `write_refill` false no refill is written or applied, and
  // `refill_due` is set when one may be due and the take could not be made without it:
  // nothing was then changed, and the result is not the answer.
  CreditTake take_on(PgConnection& c, const TakeArgs& args, bool write_refill,
                     bool& refill_due) const;
  // return_credits(), checked against `generation` unless it is null.
  void return_credits(const Uuid& lineage_id, std::uint64_t n, std::int64_t period,
                      const std::uint64_t* generation);
};

PostgresStore::PostgresStore(const std::string& conninfo, PostgresStoreOptions options) {
  if (options.audit_prune_batch == 0 ||
      options.audit_prune_batch > static_cast<std::size_t>(INT64_MAX)) {
    throw Error(ErrorCode::invalid_argument,
                "PostgresStore: audit_prune_batch must be between 1 and 2^63 - 1");
  }
  if (!valid_schema_name(options.schema)) {
    throw Error(ErrorCode::invalid_argument,
                "PostgresStore: schema must be 1-63 letters, digits or underscores, not "
                "starting with a digit");
  }
  pg::check_conninfo(conninfo);  // fails fast, before any I/O, quoting none of it
  impl_ = std::make_unique<Impl>(conninfo, std::move(options));
  Impl& impl = *impl_;
  {
    std::unique_ptr<PgConnection> conn = impl.connect(false);
    PgConnection& c = *conn;
    const Deadline d = impl.statement_deadline();
    const std::string& s = impl.quoted_schema;
    c.exec("open", "BEGIN", d);
    try {
      // Concurrent openers of the same schema migrate one at a time.
      const std::string key = "apikeys:" + impl.options.schema;
      const char* values[] = {key.c_str()};
      c.exec_params("open", "SELECT pg_advisory_xact_lock(hashtext($1)::bigint)", 1, values,
                    nullptr, nullptr, d);
      c.exec("open",
             fmt::format("CREATE SCHEMA IF NOT EXISTS {0};"
                         " CREATE TABLE IF NOT EXISTS {0}.apikeys_schema_version ("
                         "id integer NOT NULL PRIMARY KEY CHECK (id = 1),"
                         " version integer NOT NULL);"
                         " INSERT INTO {0}.apikeys_schema_version (id, version)"
                         " VALUES (1, 0) ON CONFLICT (id) DO NOTHING",
                         s),
             d);
      PgResult r = c.exec("open",
                          fmt::format("SELECT version FROM {}.apikeys_schema_version"
                                      " WHERE id = 1",
                                      s),
                          d);
      if (PQntuples(r.get()) != 1) corrupt("open", "apikeys_schema_version has no row");
      const auto version = parse_int(r.get(), 0, 0, "open", "version is not an integer");
      if (version > kCurrentVersion) {
        throw Error(ErrorCode::storage,
                    fmt::format("PostgresStore open failed: schema version {} is newer than this "
                                "library supports ({})",
                                version, kCurrentVersion));
      }
      for (const Migration& step : kMigrations) {
        if (step.to <= version) continue;
        c.exec("open", replace_schema(step.sql, s), d);
        c.exec("open",
               fmt::format("UPDATE {}.apikeys_schema_version SET version = {} WHERE id = 1", s,
                           step.to),
               d);
      }
      c.exec("open", "COMMIT", d);
    } catch (const pg::ConnectionLost&) {
      throw;
    } catch (...) {
      try {
        c.exec("open", "ROLLBACK", impl.statement_deadline());
      } catch (...) {
      }
      throw;
    }
  }  // The migrating connection closes: pooled ones are opened (and prepared) on demand.
}

PostgresStore::~PostgresStore() = default;

int PostgresStore::schema_version() noexcept { return kCurrentVersion; }

void PostgresStore::insert(const KeyRecord& record) {
  InsertParams params(record);
  params.add_credits(record);
  // Not retried: a lost reply may hide a committed insert (a retry would say
  // already_exists about our own row).
  impl_->run("insert", false, [&](PgConnection& c) {
    (void)c.exec_prepared("insert", kInsert, params.count(), params.values(), params.lengths(),
                          params.formats(), impl_->statement_deadline());
  });
}

void PostgresStore::insert_audited(const KeyRecord& record, const ChangeAudit& audit) {
  InsertParams params(record);
  params.add_credits(record);
  const std::string key = record.info.key_id.to_string();
  const std::string account = record.info.account_id.to_string();
  const char* key_and_account[] = {key.c_str(), account.c_str()};
  (void)impl_->audited("insert", audit, [&](PgConnection& c, EventBatch& batch) {
    (void)c.exec_prepared("insert", kInsert, params.count(), params.values(), params.lengths(),
                          params.formats(), impl_->statement_deadline());
    // As stored: with the lineage's credits, which a key of an existing lineage shares.
    const std::optional<KeyInfo> stored = impl_->get_on(c, "insert", kGet, key_and_account);
    if (!stored) corrupt("insert", "the key was not stored");
    batch.add(nullptr, &*stored);
    return 0;
  });
}

std::optional<KeyRecord> PostgresStore::find(std::string_view public_key) {
  return impl_->find(public_key, kFind, detail::Columns::all);
}

std::optional<KeyRecord> PostgresStore::find_for_validation(std::string_view public_key) {
  return impl_->find(public_key, kFindForValidation, detail::Columns::verdict);
}

std::vector<KeyInfo> PostgresStore::list(const Uuid& account_id) {
  const std::string account = account_id.to_string();
  const char* values[] = {account.c_str()};
  return impl_->run("list", true, [&](PgConnection& c) {
    PgResult r =
        c.exec_prepared("list", kList, 1, values, nullptr, nullptr, impl_->statement_deadline());
    std::vector<KeyInfo> out;
    const int n = PQntuples(r.get());
    out.reserve(static_cast<std::size_t>(n));
    for (int i = 0; i < n; ++i) out.push_back(read_info(r.get(), i, "list"));
    return out;
  });
}

std::optional<KeyInfo> PostgresStore::set_status(const Uuid& account_id, const Uuid& key_id,
                                                 KeyStatus status) {
  const std::string s = std::to_string(static_cast<int>(status));
  const std::string key = key_id.to_string();
  const std::string account = account_id.to_string();
  const char* values[] = {s.c_str(), key.c_str(), account.c_str()};
  // Idempotent: a retry after a lost reply sets the same status and returns the row.
  return impl_->run("set_status", true, [&](PgConnection& c) {
    PgResult r = c.exec_prepared("set_status", kSetStatus, 3, values, nullptr, nullptr,
                                 impl_->statement_deadline());
    return single_row(r, "set_status");
  });
}

std::optional<KeyInfo> PostgresStore::remove(const Uuid& account_id, const Uuid& key_id) {
  const std::string key = key_id.to_string();
  const std::string account = account_id.to_string();
  const char* values[] = {key.c_str(), account.c_str()};
  // Not retried: after a lost reply the row may be gone, and a retry would answer
  // "no such key" about a delete that succeeded.
  std::optional<KeyInfo> removed =
      impl_->run("remove", false, [&](PgConnection& c) { return impl_->remove_on(c, values); });
  impl_->drop_orphan_credits(removed);
  return removed;
}

std::optional<KeyInfo> PostgresStore::remove_audited(const Uuid& account_id, const Uuid& key_id,
                                                     const ChangeAudit& audit) {
  const std::string key = key_id.to_string();
  const std::string account = account_id.to_string();
  const char* values[] = {key.c_str(), account.c_str()};
  // The DELETE returns the row it deleted: the before-state is the state it replaced.
  std::optional<KeyInfo> removed =
      impl_->audited("remove", audit, [&](PgConnection& c, EventBatch& batch) {
        std::optional<KeyInfo> gone = impl_->remove_on(c, values);
        if (gone) batch.add(&*gone, nullptr);
        return gone;
      });
  impl_->drop_orphan_credits(removed);
  return removed;
}

std::optional<KeyInfo> PostgresStore::get(const Uuid& account_id, const Uuid& key_id) {
  const std::string key = key_id.to_string();
  const std::string account = account_id.to_string();
  const char* values[] = {key.c_str(), account.c_str()};
  return impl_->run("get", true, [&](PgConnection& c) {
    PgResult r =
        c.exec_prepared("get", kGet, 2, values, nullptr, nullptr, impl_->statement_deadline());
    return single_row(r, "get");
  });
}

std::vector<KeyInfo> PostgresStore::list_page(const Uuid& account_id,
                                              const std::optional<PagePosition>& after,
                                              std::size_t limit, std::optional<KeyStatus> status) {
  if (limit == 0) return {};
  const std::string account = account_id.to_string();
  const std::string status_text = status ? std::to_string(static_cast<int>(*status)) : "";
  const std::string limit_text = std::to_string(std::min<std::uint64_t>(
      limit, static_cast<std::uint64_t>(std::numeric_limits<std::int64_t>::max())));
  const std::string created = after ? std::to_string(to_unix_millis(after->created_at)) : "";
  const std::string key = after ? after->key_id.to_string() : "";
  const char* status_value = status ? status_text.c_str() : nullptr;  // NULL: any status
  const char* first[] = {account.c_str(), status_value, limit_text.c_str()};
  const char* next[] = {account.c_str(), status_value, created.c_str(), key.c_str(),
                        limit_text.c_str()};
  return impl_->run("list_page", true, [&](PgConnection& c) {
    PgResult r = after ? c.exec_prepared("list_page", kPageAfter, 5, next, nullptr, nullptr,
                                         impl_->statement_deadline())
                       : c.exec_prepared("list_page", kPageFirst, 3, first, nullptr, nullptr,
                                         impl_->statement_deadline());
    std::vector<KeyInfo> out;
    const int n = PQntuples(r.get());
    out.reserve(static_cast<std::size_t>(n));
    for (int i = 0; i < n; ++i) out.push_back(read_info(r.get(), i, "list_page"));
    return out;
  });
}

WriteResult PostgresStore::replace(const Uuid& account_id, const KeyInfo& next,
                                   std::uint64_t expected_version) {
  const ReplaceParams params("replace", account_id, next, expected_version);
  // Not retried: after a lost reply the write may have committed, and a retry would
  // report a conflict with our own change.
  return impl_->run("replace", false, [&](PgConnection& c) {
    return impl_->compare_and_set(c, "replace", kReplace, params, expected_version);
  });
}

WriteResult PostgresStore::replace_audited(const Uuid& account_id, const KeyInfo& next,
                                           std::uint64_t expected_version,
                                           const ChangeAudit& audit) {
  const ReplaceParams params("replace", account_id, next, expected_version);
  return impl_->audited_compare_and_set("replace", kReplace, params, expected_version, audit,
                                        nullptr);
}

WriteResult PostgresStore::rotate(const Uuid& account_id, const KeyInfo& old_next,
                                  std::uint64_t expected_version, const KeyRecord& successor) {
  const InsertParams insert(successor, "rotate");
  ReplaceParams params("rotate", account_id, old_next, expected_version);
  params.append(insert);
  // Not retried, as replace(); one statement, so both writes or neither.
  return impl_->run("rotate", false, [&](PgConnection& c) {
    return impl_->compare_and_set(c, "rotate", kRotate, params, expected_version);
  });
}

WriteResult PostgresStore::rotate_audited(const Uuid& account_id, const KeyInfo& old_next,
                                          std::uint64_t expected_version,
                                          const KeyRecord& successor, const ChangeAudit& audit) {
  const InsertParams insert(successor, "rotate");
  ReplaceParams params("rotate", account_id, old_next, expected_version);
  params.append(insert);
  return impl_->audited_compare_and_set("rotate", kRotate, params, expected_version, audit,
                                        &successor);
}

std::vector<KeyInfo> PostgresStore::revoke_all(const Uuid& account_id, TimePoint at) {
  const std::string account = account_id.to_string();
  const std::string when = std::to_string(to_unix_millis(at));
  const char* values[] = {account.c_str(), when.c_str()};
  // Not retried: after a lost reply the keys may be revoked already, and a retry would
  // return none of them, so their cached verdicts would not be dropped.
  return impl_->run("revoke_all", false, [&](PgConnection& c) {
    PgResult r = c.exec_prepared("revoke_all", kRevokeAll, 2, values, nullptr, nullptr,
                                 impl_->statement_deadline());
    return all_rows(r, "revoke_all");
  });
}

std::vector<KeyInfo> PostgresStore::revoke_all_audited(const Uuid& account_id, TimePoint at,
                                                       const ChangeAudit& audit) {
  const std::string account = account_id.to_string();
  const std::string when = std::to_string(to_unix_millis(at));
  return impl_->audited("revoke_all", audit, [&](PgConnection& c, EventBatch& batch) {
    // The keys to revoke, locked: none can change before the UPDATE below, which
    // revokes exactly these (a concurrent revoke_all that locked them first has
    // revoked them, and they are not read here), so each before is what was replaced.
    const char* account_value[] = {account.c_str()};
    PgResult locked = c.exec_prepared("revoke_all", kLockAccount, 1, account_value, nullptr,
                                      nullptr, impl_->statement_deadline());
    const std::vector<KeyInfo> before = all_rows(locked, "revoke_all");  // key_id order
    if (before.empty()) return std::vector<KeyInfo>{};
    PgArray ids;
    for (const KeyInfo& k : before) ids.plain(k.key_id.to_string());
    const char* values[] = {account.c_str(), when.c_str(), ids.close()};
    PgResult r = c.exec_prepared("revoke_all", kRevokeLocked, 3, values, nullptr, nullptr,
                                 impl_->statement_deadline());
    std::vector<KeyInfo> after = all_rows(r, "revoke_all");
    for (KeyInfo& key : after) {
      const auto was =
          std::lower_bound(before.begin(), before.end(), key.key_id,
                           [](const KeyInfo& k, const Uuid& id) { return k.key_id < id; });
      if (was == before.end() || was->key_id != key.key_id) {
        corrupt("revoke_all", "revoked a key it had not locked");
      }
      key.credits = was->credits;  // untouched, as replace_audited() keeps them
      batch.add(&*was, &key);
    }
    return after;
  });
}

void PostgresStore::record_last_use(const std::vector<LastUse>& uses) {
  if (uses.empty()) return;
  std::string ids = "{";
  std::string times = "{";
  for (std::size_t i = 0; i < uses.size(); ++i) {
    if (i != 0) {
      ids += ',';
      times += ',';
    }
    ids += uses[i].key_id.to_string();
    times += std::to_string(to_unix_millis(uses[i].at));
  }
  ids += '}';
  times += '}';
  const char* values[] = {ids.c_str(), times.c_str()};
  // Idempotent (keeps the later time): safe to retry.
  impl_->run("record_last_use", true, [&](PgConnection& c) {
    (void)c.exec_prepared("record_last_use", kLastUse, 2, values, nullptr, nullptr,
                          impl_->statement_deadline());
  });
}

std::size_t PostgresStore::replace_digests(const std::vector<DigestChange>& changes) {
  if (changes.empty()) return 0;
  const DigestArrays arrays(changes);
  // Not retried: after a lost reply the rewrite may have committed, and a retry would
  // find the old digests gone and report fewer rewrites than were made.
  return impl_->run("replace_digests", false, [&](PgConnection& c) -> std::size_t {
    PgResult r = c.exec_prepared("replace_digests", kReplaceDigests, DigestArrays::kCount,
                                 arrays.values(), nullptr, nullptr, impl_->statement_deadline());
    return static_cast<std::size_t>(rows_changed(r.get(), "replace_digests"));
  });
}

std::size_t PostgresStore::replace_digests_audited(const std::vector<DigestChange>& changes,
                                                   const ChangeAudit& audit) {
  if (changes.empty()) return 0;
  const DigestArrays arrays(changes);
  return impl_->audited(
      "replace_digests", audit, [&](PgConnection& c, EventBatch& batch) -> std::size_t {
        PgResult r =
            c.exec_params("replace_digests", impl_->sql.replace_digests_keys, DigestArrays::kCount,
                          arrays.values(), nullptr, nullptr, impl_->statement_deadline());
        // The keys rewritten, in batch order, as they now are.
        const std::vector<KeyInfo> keys = all_rows(r, "replace_digests");
        for (const KeyInfo& key : keys) batch.add(&key, &key);
        return keys.size();
      });
}

std::vector<PepperCount> PostgresStore::pepper_counts() {
  return impl_->run("pepper_counts", true, [&](PgConnection& c) {
    PgResult r = c.exec_prepared("pepper_counts", kPepperCounts, 0, nullptr, nullptr, nullptr,
                                 impl_->statement_deadline());
    std::vector<PepperCount> out;
    const int n = PQntuples(r.get());
    out.reserve(static_cast<std::size_t>(n));
    for (int i = 0; i < n; ++i) {
      const std::int64_t id =
          parse_int(r.get(), i, 0, "pepper_counts", "pepper_id is not an integer");
      const std::int64_t keys =
          parse_int(r.get(), i, 1, "pepper_counts", "count is not an integer");
      if (id < 0 || id > static_cast<std::int64_t>(std::numeric_limits<std::uint32_t>::max()) ||
          keys < 0) {
        corrupt("pepper_counts", "pepper_id out of range");
      }
      out.push_back(PepperCount{static_cast<std::uint32_t>(id), static_cast<std::uint64_t>(keys)});
    }
    return out;
  });
}

namespace {

constexpr auto kMaxCreditsInt = static_cast<std::int64_t>(KeyPolicyLimits::kMaxCredits);

// A row of take_credits or credits_view from column `col` on: remaining, then (take
// only) last_take, then refilled_period, refill_interval, whether there is a refill.
void read_take(const PGresult* r, int col, CreditTake& take) {
  take.remaining =
      credit_value(r, 0, col, "take_credits", "credits remaining out of range", kMaxCreditsInt);
  take.period = parse_int(r, 0, col + 1, "take_credits", "refilled_period is not an integer");
  const std::uint64_t interval =
      credit_value(r, 0, col + 2, "take_credits", "unknown refill interval", 1);
  const bool has_refill = PQgetvalue(r, 0, col + 3)[0] == 't';
  take.period_end =
      has_refill ? refill_period_start(static_cast<RefillInterval>(interval), take.period + 1)
                 : TimePoint::max();
}

}  // namespace

CreditTake PostgresStore::Impl::take_on(PgConnection& c, const TakeArgs& args, bool write_refill,
                                        bool& refill_due) const {
  refill_due = false;
  const char* write = write_refill ? "true" : "false";
  const char* take_values[] = {args.lineage.c_str(), args.low.c_str(), args.high.c_str(),
                               args.month.c_str(),   args.day.c_str(), write};
  CreditTake take;
  PgResult r = c.exec_prepared("take_credits", kTakeCredits, 6, take_values, nullptr, nullptr,
                               statement_deadline());
  if (PQntuples(r.get()) == 1) {
    take.outcome = CreditTake::Outcome::taken;
    take.taken =
        credit_value(r.get(), 0, 1, "take_credits", "last_take out of range", kMaxCreditsInt);
    // remaining, then refilled_period, refill_interval and the refill flag after last_take.
    const PGresult* p = r.get();
    take.remaining =
        credit_value(p, 0, 0, "take_credits", "credits remaining out of range", kMaxCreditsInt);
    take.period = parse_int(p, 0, 2, "take_credits", "refilled_period is not an integer");
    const std::uint64_t interval =
        credit_value(p, 0, 3, "take_credits", "unknown refill interval", 1);
    take.period_end =
        PQgetvalue(p, 0, 4)[0] == 't'
            ? refill_period_start(static_cast<RefillInterval>(interval), take.period + 1)
            : TimePoint::max();
    take.generation = static_cast<std::uint64_t>(
        parse_int(p, 0, 5, "take_credits", "generation is not an integer"));
    return take;
  }
  // Nothing taken: too few credits, none at all, or (write_refill false) a refill due.
  const char* view_values[] = {args.lineage.c_str(), args.month.c_str(), args.day.c_str(), write};
  PgResult v = c.exec_prepared("take_credits", kCreditsView, 4, view_values, nullptr, nullptr,
                               statement_deadline());
  if (PQntuples(v.get()) == 0) return take;  // no_credits
  take.outcome = CreditTake::Outcome::insufficient;
  read_take(v.get(), 0, take);
  // A refill due, or enough credits after all: another take wrote the refill between
  // the two statements (a take refused for the refill it would have had to write).
  if (!write_refill && (PQgetvalue(v.get(), 0, 4)[0] == 't' || take.remaining >= args.min)) {
    refill_due = true;
  }
  return take;
}

CreditTake PostgresStore::take_credits(const Uuid& lineage_id, std::uint64_t min, std::uint64_t max,
                                       TimePoint now) {
  const TakeArgs args(lineage_id, min, max, now);
  // Not retried: after a lost reply the take may have committed.
  return impl_->run("take_credits", false, [&](PgConnection& c) {
    bool refill_due = false;
    return impl_->take_on(c, args, true, refill_due);
  });
}

CreditTake PostgresStore::take_credits_audited(const Uuid& lineage_id, std::uint64_t min,
                                               std::uint64_t max, TimePoint now,
                                               const ChangeAudit& audit) {
  const TakeArgs args(lineage_id, min, max, now);
  // No refill due: the take, as take_credits() makes it. Not retried.
  bool refill_due = false;
  CreditTake take = impl_->run("take_credits", false, [&](PgConnection& c) {
    return impl_->take_on(c, args, false, refill_due);
  });
  if (!refill_due) return take;
  // A refill is due: one transaction locks the credits row, so that of the takers that
  // found it due only the first writes it (the others find it written), writes it with
  // the event of the lineage's newest key, then takes.
  return impl_->audited("take_credits", audit, [&](PgConnection& c, EventBatch& batch) {
    const Deadline d = impl_->statement_deadline();
    const char* lock_values[] = {args.lineage.c_str(), args.month.c_str(), args.day.c_str()};
    PgResult row =
        c.exec_params("take_credits", impl_->sql.lock_credits, 3, lock_values, nullptr, nullptr, d);
    if (PQntuples(row.get()) == 0) return CreditTake{};  // no_credits
    if (PQgetvalue(row.get(), 0, 6)[0] == 't') {
      const Credits stored = read_credits(row.get(), 0, "take_credits");
      const char* view_values[] = {args.lineage.c_str(), args.month.c_str(), args.day.c_str(),
                                   "true"};
      (void)c.exec_prepared("take_credits", kCreditsView, 4, view_values, nullptr, nullptr, d);
      const char* lineage_value[] = {args.lineage.c_str()};
      PgResult k = c.exec_params("take_credits", impl_->sql.newest_key, 1, lineage_value, nullptr,
                                 nullptr, d);
      // The key as read after the refill, with the credits the refill replaced.
      if (std::optional<KeyInfo> after = single_row(k, "take_credits")) {
        KeyInfo before = *after;
        before.credits = stored;
        batch.add(&before, &*after);
      }
    }
    bool due_again = false;  // the row is locked and refilled: nothing can be due
    return impl_->take_on(c, args, true, due_again);
  });
}

void PostgresStore::return_credits(const Uuid& lineage_id, std::uint64_t n, std::int64_t period) {
  impl_->return_credits(lineage_id, n, period, nullptr);
}

void PostgresStore::return_credits_checked(const Uuid& lineage_id, std::uint64_t n,
                                           std::int64_t period, std::uint64_t generation) {
  impl_->return_credits(lineage_id, n, period, &generation);
}

void PostgresStore::Impl::return_credits(const Uuid& lineage_id, std::uint64_t n,
                                         std::int64_t period, const std::uint64_t* generation) {
  if (n == 0) return;
  const std::string lineage = lineage_id.to_string();
  const std::string count = std::to_string(std::min(n, KeyPolicyLimits::kMaxCredits));
  const std::string when = std::to_string(period);
  const std::string which =
      generation != nullptr ? std::to_string(static_cast<std::int64_t>(*generation)) : "";
  const char* values[] = {lineage.c_str(), count.c_str(), when.c_str(), which.c_str()};
  // Not retried: after a lost reply the credits may be back already.
  run("return_credits", false, [&](PgConnection& c) {
    (void)c.exec_prepared(
        "return_credits", generation != nullptr ? kReturnCreditsChecked : kReturnCredits,
        generation != nullptr ? 4 : 3, values, nullptr, nullptr, statement_deadline());
  });
}

std::optional<KeyInfo> PostgresStore::Impl::change_credits_on(PgConnection& c,
                                                              const std::string& key,
                                                              const std::string& account,
                                                              const CreditsChange& change,
                                                              std::optional<Credits>& stored) {
  const std::string& s = quoted_schema;
  const Deadline d = statement_deadline();
  const char* key_values[] = {key.c_str(), account.c_str()};
  PgResult k = c.exec_params("change_credits",
                             fmt::format("SELECT COALESCE(lineage_id, key_id) FROM {}.apikeys_keys"
                                         " WHERE key_id = $1 AND account_id = $2",
                                         s),
                             2, key_values, nullptr, nullptr, d);
  if (PQntuples(k.get()) == 0) return std::nullopt;
  const std::string lineage = PQgetvalue(k.get(), 0, 0);
  const char* lineage_values[] = {lineage.c_str()};
  // Creations of one lineage's credits wait for each other (the row lock below
  // cannot order them: there is no row yet).
  c.exec_params("change_credits",
                "SELECT pg_advisory_xact_lock(hashtext('apikeys_credits:' || $1::text))", 1,
                lineage_values, nullptr, nullptr, d);
  PgResult row =
      c.exec_params("change_credits",
                    fmt::format("SELECT remaining, refill_amount, refill_interval, refill_mode,"
                                " refill_cap, refilled_period FROM {}.apikeys_key_credits"
                                " WHERE lineage_id = $1 FOR UPDATE",
                                s),
                    1, lineage_values, nullptr, nullptr, d);
  stored.reset();
  if (PQntuples(row.get()) == 1) stored = read_credits(row.get(), 0, "change_credits");
  std::optional<Credits> next;  // nullopt: no credits afterwards
  switch (change.op) {
    case CreditsOp::remove: break;
    case CreditsOp::add:
      if (!stored) throw Error(ErrorCode::conflict, "the key has no credits to add to");
      next = refilled(*stored, change.at);
      next->remaining = detail::add_clamped(next->remaining, change.delta);
      break;
    case CreditsOp::configure:
      if (!stored && !change.remaining) {
        throw Error(ErrorCode::conflict, "the key has no credits: give a balance");
      }
      next = detail::configured(stored ? refilled(*stored, change.at) : Credits{}, change);
      break;
  }
  if (next) {
    const Credits& n = *next;
    const std::string remaining = std::to_string(n.remaining);
    const std::string amount =
        n.refill ? std::to_string(std::min(n.refill->amount, KeyPolicyLimits::kMaxCredits)) : "";
    const std::string interval =
        std::to_string(n.refill ? static_cast<int>(n.refill->interval) : 0);
    const std::string mode = std::to_string(n.refill ? static_cast<int>(n.refill->mode) : 0);
    const std::string cap =
        n.refill ? std::to_string(std::min(n.refill->cap, KeyPolicyLimits::kMaxCredits)) : "0";
    const std::string period = std::to_string(n.refilled_period);
    // A balance set (configure) takes a new generation; an add keeps the row's.
    const char* new_balance = change.op == CreditsOp::configure ? "true" : "false";
    const char* values[] = {
        lineage.c_str(),  remaining.c_str(), n.refill ? amount.c_str() : nullptr,
        interval.c_str(), mode.c_str(),      cap.c_str(),
        period.c_str(),   new_balance};
    c.exec_params("change_credits",
                  fmt::format("INSERT INTO {0}.apikeys_key_credits (lineage_id, remaining,"
                              " refill_amount, refill_interval, refill_mode, refill_cap,"
                              " refilled_period, generation) VALUES ($1, $2, $3, $4, $5, $6, $7,"
                              " {1})"
                              " ON CONFLICT (lineage_id) DO UPDATE SET"
                              " remaining = EXCLUDED.remaining,"
                              " refill_amount = EXCLUDED.refill_amount,"
                              " refill_interval = EXCLUDED.refill_interval,"
                              " refill_mode = EXCLUDED.refill_mode,"
                              " refill_cap = EXCLUDED.refill_cap,"
                              " refilled_period = EXCLUDED.refilled_period,"
                              " generation = CASE WHEN $8::boolean THEN EXCLUDED.generation"
                              " ELSE {0}.apikeys_key_credits.generation END",
                              s, kNewGenerationSql),
                  8, values, nullptr, nullptr, d);
  } else if (stored) {
    c.exec_params("change_credits",
                  fmt::format("DELETE FROM {}.apikeys_key_credits WHERE lineage_id = $1", s), 1,
                  lineage_values, nullptr, nullptr, d);
  }
  if (stored.has_value() != next.has_value()) {
    // Every key of the lineage has a new verdict (it has credits, or not): one
    // revision and one log row each, as revoke_all numbers them.
    c.exec_params(
        "change_credits",
        fmt::format("WITH lineage AS (SELECT public_key, row_number() OVER (ORDER BY created_at,"
                    " key_id) AS i FROM {0}.apikeys_keys WHERE COALESCE(lineage_id, key_id) = $1),"
                    " counted AS (SELECT count(*) AS n FROM lineage),"
                    " bump AS (UPDATE {0}.apikeys_meta SET revision = revision +"
                    " (SELECT n FROM counted) WHERE id = 1 AND (SELECT n FROM counted) > 0"
                    " RETURNING revision),"
                    " logged AS (INSERT INTO {0}.apikeys_changes (revision, public_key)"
                    " SELECT bump.revision - counted.n + lineage.i, lineage.public_key"
                    " FROM bump, counted, lineage WHERE counted.n - lineage.i < {1}"
                    " ON CONFLICT (revision) DO UPDATE SET public_key = EXCLUDED.public_key),"
                    " pruned AS (DELETE FROM {0}.apikeys_changes"
                    " WHERE revision <= (SELECT revision FROM bump) - {1})"
                    " SELECT 1",
                    s, kChangeLogSize),
        1, lineage_values, nullptr, nullptr, d);
  }
  PgResult got = c.exec_prepared("change_credits", kGet, 2, key_values, nullptr, nullptr, d);
  return single_row(got, "change_credits");
}

std::optional<KeyInfo> PostgresStore::change_credits(const Uuid& account_id, const Uuid& key_id,
                                                     const CreditsChange& change) {
  const std::string key = key_id.to_string();
  const std::string account = account_id.to_string();
  // Not retried: after a lost reply the change may have committed.
  return impl_->transaction("change_credits", [&](PgConnection& c) {
    std::optional<Credits> stored;
    return impl_->change_credits_on(c, key, account, change, stored);
  });
}

std::optional<KeyInfo> PostgresStore::change_credits_audited(const Uuid& account_id,
                                                             const Uuid& key_id,
                                                             const CreditsChange& change,
                                                             const ChangeAudit& audit) {
  const std::string key = key_id.to_string();
  const std::string account = account_id.to_string();
  return impl_->audited("change_credits", audit, [&](PgConnection& c, EventBatch& batch) {
    std::optional<Credits> stored;
    std::optional<KeyInfo> after = impl_->change_credits_on(c, key, account, change, stored);
    if (after) {
      // The key as read at the end of the change, with the credits it replaced (locked
      // from the first read on): the two states differ in credits only.
      KeyInfo before = *after;
      before.credits = stored;
      batch.add(&before, &*after);
    }
    return after;
  });
}

namespace {

// Milliseconds since the epoch, rounded up: every event time is a whole millisecond,
// so "time >= t" and "time < t" are "time_ms >= ceil_millis(t)" and "time_ms <
// ceil_millis(t)".
std::int64_t ceil_millis(TimePoint t) {
  const std::int64_t ms = to_unix_millis(t);
  return from_unix_millis(ms) < t ? ms + 1 : ms;
}

// A column of audit_events that holds a stable uint8 code.
std::uint8_t audit_code(const PGresult* r, int row, int col, const char* what) {
  const std::int64_t v = parse_int(r, row, col, "audit_events", what);
  if (v < 0 || v > std::numeric_limits<std::uint8_t>::max()) corrupt("audit_events", what);
  return static_cast<std::uint8_t>(v);
}

Uuid audit_uuid(const PGresult* r, int row, int col, const char* what) {
  if (PQgetisnull(r, row, col)) corrupt("audit_events", what);
  const std::optional<Uuid> id = Uuid::parse(PQgetvalue(r, row, col));
  if (!id) corrupt("audit_events", what);
  return *id;
}

std::string audit_text(const PGresult* r, int row, int col, const char* what) {
  if (PQgetisnull(r, row, col)) corrupt("audit_events", what);
  return std::string(PQgetvalue(r, row, col), static_cast<std::size_t>(PQgetlength(r, row, col)));
}

}  // namespace

std::vector<AuditEvent> PostgresStore::audit_events(const Uuid& account_id,
                                                    const AuditRange& range) {
  if (range.limit == 0) return {};
  // The conditions that are set, and only those, so that the planner sees each query's
  // own shape: an index range on (account_id[, key_id], time_ms DESC, event_id DESC).
  std::vector<std::string> owned;
  owned.reserve(6);
  owned.push_back(account_id.to_string());
  std::string where = "account_id = $1";
  const auto param = [&owned](std::string value) {
    owned.push_back(std::move(value));
    return fmt::format("${}", owned.size());
  };
  if (range.key_id) where += " AND key_id = " + param(range.key_id->to_string()) + "::uuid";
  if (range.since) {
    where += " AND time_ms >= " + param(std::to_string(ceil_millis(*range.since))) + "::bigint";
  }
  if (range.after) {
    const std::int64_t ms = to_unix_millis(range.after->time);
    if (from_unix_millis(ms) == range.after->time) {
      // Strictly after it in (time DESC, event_id DESC): uuid compares as its 16 bytes,
      // big-endian, as Uuid::operator< does.
      const std::string time = param(std::to_string(ms));
      where += fmt::format(" AND (time_ms, event_id) < ({}::bigint, {}::uuid)", time,
                           param(range.after->event_id.to_string()));
    } else {
      // Between two milliseconds: no event has that time; those before it come after.
      where += " AND time_ms <= " + param(std::to_string(ms)) + "::bigint";
    }
  }
  const std::string limit = param(std::to_string(std::min<std::uint64_t>(
      range.limit, static_cast<std::uint64_t>(std::numeric_limits<std::int64_t>::max()))));
  const std::string query = fmt::format(
      "SELECT event_id, time_ms, action, actor_type, actor_id, actor_detail, reason, key_id,"
      " before_json, after_json FROM {}.apikeys_audit_events WHERE {}"
      " ORDER BY time_ms DESC, event_id DESC LIMIT {}::bigint",
      impl_->quoted_schema, where, limit);
  std::vector<const char*> values;
  values.reserve(owned.size());
  for (const std::string& v : owned) values.push_back(v.c_str());
  return impl_->run("audit_events", true, [&](PgConnection& c) {
    PgResult r = c.exec_params("audit_events", query, static_cast<int>(values.size()),
                               values.data(), nullptr, nullptr, impl_->statement_deadline());
    const PGresult* p = r.get();
    if (PQnfields(p) != 10) corrupt("audit_events", "missing columns");
    std::vector<AuditEvent> out;
    const int n = PQntuples(p);
    out.reserve(static_cast<std::size_t>(n));
    for (int i = 0; i < n; ++i) {
      AuditEvent e;
      e.event_id = audit_uuid(p, i, 0, "event_id is not a UUID");
      e.time = from_unix_millis(parse_int(p, i, 1, "audit_events", "time_ms is not an integer"));
      e.action = static_cast<AuditAction>(audit_code(p, i, 2, "action out of range"));
      e.context.actor.type = static_cast<ActorType>(audit_code(p, i, 3, "actor_type out of range"));
      e.context.actor.id = audit_text(p, i, 4, "actor_id is null");
      e.context.actor.detail = audit_text(p, i, 5, "actor_detail is null");
      e.context.reason = audit_text(p, i, 6, "reason is null");
      e.account_id = account_id;
      e.key_id = audit_uuid(p, i, 7, "key_id is not a UUID");
      e.before = audit_text(p, i, 8, "before_json is null");
      e.after = audit_text(p, i, 9, "after_json is null");
      out.push_back(std::move(e));
    }
    return out;
  });
}

std::uint64_t PostgresStore::prune_audit(TimePoint before) {
  const std::string bound = std::to_string(ceil_millis(before));
  const std::uint64_t batch = impl_->options.audit_prune_batch;
  const std::string batch_text = std::to_string(batch);
  const char* values[] = {bound.c_str(), batch_text.c_str()};
  std::uint64_t total = 0;
  for (;;) {
    // One batch per statement, each its own transaction. Not retried: after a lost
    // reply the events may be gone, and a retry would count fewer than were deleted.
    const std::uint64_t n = impl_->run("prune_audit", false, [&](PgConnection& c) {
      PgResult r = c.exec_params("prune_audit", impl_->sql.prune_audit, 2, values, nullptr, nullptr,
                                 impl_->statement_deadline());
      return rows_changed(r.get(), "prune_audit");
    });
    total += n;
    if (n < batch) return total;
  }
}

std::uint64_t PostgresStore::revision() {
  return impl_->run("revision", true, [&](PgConnection& c) {
    PgResult r = c.exec_prepared("revision", kRevision, 0, nullptr, nullptr, nullptr,
                                 impl_->statement_deadline());
    if (PQntuples(r.get()) != 1) corrupt("revision", "apikeys_meta has no row");
    const std::int64_t v = parse_int(r.get(), 0, 0, "revision", "revision is not an integer");
    if (v < 0) corrupt("revision", "revision is negative");
    return static_cast<std::uint64_t>(v);
  });
}

std::optional<StoreChanges> PostgresStore::changes_since(std::uint64_t since) {
  if (since > static_cast<std::uint64_t>(std::numeric_limits<std::int64_t>::max()))
    return std::nullopt;
  const std::string from = std::to_string(since);
  const char* values[] = {from.c_str()};
  return impl_->run("changes_since", true, [&](PgConnection& c) -> std::optional<StoreChanges> {
    PgResult r = c.exec_prepared("changes_since", kChanges, 1, values, nullptr, nullptr,
                                 impl_->statement_deadline());
    const int n = PQntuples(r.get());
    if (n < 1) corrupt("changes_since", "apikeys_meta has no row");
    const std::int64_t now =
        parse_int(r.get(), 0, 0, "changes_since", "revision is not an integer");
    if (now < 0) corrupt("changes_since", "revision is negative");
    StoreChanges out;
    out.revision = static_cast<std::uint64_t>(now);
    // Older than the log can reach, or newer than the store (a restored backup).
    if (since > out.revision || out.revision - since > static_cast<std::uint64_t>(kChangeLogSize)) {
      return std::nullopt;
    }
    if (since == out.revision) return out;
    std::uint64_t expected = since + 1;
    out.public_keys.reserve(static_cast<std::size_t>(n));
    for (int i = 0; i < n; ++i) {
      // Every step since `since` must be there, or some change would go unseen.
      if (PQgetisnull(r.get(), i, 1)) return std::nullopt;
      const std::int64_t step =
          parse_int(r.get(), i, 1, "changes_since", "revision is not an integer");
      if (static_cast<std::uint64_t>(step) != expected) return std::nullopt;
      out.public_keys.emplace_back(PQgetvalue(r.get(), i, 2));
      ++expected;
    }
    if (expected != out.revision + 1) return std::nullopt;
    return out;
  });
}

}  // namespace apikeys
