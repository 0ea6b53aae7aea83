// SqliteStore: one writer connection under a mutex, a lazily grown pool of query-only
// reader connections (sqlite/reader_pool.hpp), prepared statements reused per
// connection, and a schema kept in step by forward migrations (sqlite/schema.hpp).
// The rules it keeps are numbered in doc/sqlite-store.md; the code cites them.
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
#include <cstdint>
#include <exception>
#include <filesystem>
#include <iterator>
#include <limits>
#include <map>
#include <memory>
#include <string>
#include <string_view>
#include <type_traits>
#include <utility>
#include <vector>

#include "apikeys/error.hpp"
#include "credits_ops.hpp"
#include "decoy_reads.hpp"
#include "sqlite/admission.hpp"
#include "sqlite/queries.hpp"
#include "sqlite/reader_pool.hpp"
#include "sqlite/record_codec.hpp"
#include "sqlite/schema.hpp"
#include "sqlite/statement.hpp"
#include "text.hpp"
#include "thread_annotations.hpp"

namespace apikeys {
namespace {

// The store's private parts: statements, schema, reader pool and the SQL they share.
using namespace detail::sqlite;  // NOLINT(google-build-using-namespace)

struct Writer {
  explicit Writer(SQLite::Database&& database)
      : db(std::move(database)),
        insert(db, insert_key_sql().c_str()),
        set_status(db, set_status_sql().c_str()),
        remove(db, remove_sql().c_str()),
        replace(db, replace_sql().c_str()),
        get(db, get_sql().c_str()),
        revoke_all(db, revoke_all_sql().c_str()),
        bump_revision(db, kBumpRevisionSql),
        log_change(db, kLogChangeSql),
        prune_changes(db, kPruneChangesSql),
        last_use(db, kLastUseSql),
        replace_digest(db, kReplaceDigestSql),
        credits(db, credits_sql().c_str()),
        insert_credits(db, kInsertCreditsSql),
        put_credits(db, kPutCreditsSql),
        delete_credits(db, kDeleteCreditsSql),
        drop_orphan_credits(db, kDropOrphanCreditsSql),
        lineage_keys(db, kLineageKeysSql),
        return_credits(db, kReturnCreditsSql),
        return_credits_checked(db, kReturnCreditsCheckedSql),
        take_credits(db, take_credits_sql().c_str()),
        take_unrefilled(db, take_credits_sql(true).c_str()),
        newest_of_lineage(db, newest_of_lineage_sql().c_str()),
        key_by_id(db, key_by_id_sql().c_str()),
        list(db, list_sql().c_str()),
        insert_audit(db, insert_audit_sql().c_str()),
        prune_audit(db, kPruneAuditSql) {}

  SQLite::Database db;
  RawStatement insert;
  RawStatement set_status;
  RawStatement remove;
  RawStatement replace;
  RawStatement get;
  RawStatement revoke_all;
  SQLite::Statement bump_revision;
  SQLite::Statement log_change;
  SQLite::Statement prune_changes;
  SQLite::Statement last_use;
  SQLite::Statement replace_digest;
  RawStatement credits;
  RawStatement insert_credits;
  RawStatement put_credits;
  RawStatement delete_credits;
  RawStatement drop_orphan_credits;
  RawStatement lineage_keys;
  RawStatement return_credits;
  RawStatement return_credits_checked;
  RawStatement take_credits;
  RawStatement take_unrefilled;    // take_credits_audited()'s first try (rule 36)
  RawStatement newest_of_lineage;  // the key a refill's event names (rule 36)
  RawStatement key_by_id;          // the key a rewritten digest's event names (rule 36)
  RawStatement list;               // an audited revoke_all's keys as they were
  RawStatement insert_audit;       // one audit event
  RawStatement prune_audit;
};

// What a ChangeAudit threw, carried out of the write transaction (which rolls back on
// the way) and past the store's error translation, which it passes untouched because it
// is no std::exception; Impl::audited_write() rethrows it as it was thrown (rule 32).
struct AuditThrew {
  std::exception_ptr error;
};

// The write counters of the files open in this process (see file_epoch()).
struct FileEpochs {
  detail::Mutex mu;
  std::map<std::string, std::weak_ptr<std::atomic<std::uint64_t>>> files APIKEYS_GUARDED_BY(mu);
};

// One write counter per database file in this process, shared by every SqliteStore
// open on it (keyed by the file's canonical path; entries die with their last store).
// See doc/sqlite-store.md, rule 7.
std::shared_ptr<std::atomic<std::uint64_t>> file_epoch(const std::string& path) {
  static FileEpochs epochs;
  std::error_code ec;
  std::string key = std::filesystem::canonical(path, ec).string();
  if (ec) key = path;
  detail::MutexLock lock(epochs.mu);
  auto& files = epochs.files;
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

// A key row of a RETURNING clause: its KeyInfo fields, then its admission columns.
KeyInfo read_key_info(sqlite3_stmt* s, const char* op) {
  KeyInfo info = read_info(s, op);
  read_admission(s, static_cast<int>(detail::kInfoFieldCount), op, info, false);
  return info;
}

// A key row read with its lineage's credits (full_info_columns()).
KeyInfo read_full_info(sqlite3_stmt* s, const char* op) {
  KeyInfo info = read_key_info(s, op);
  const int flag = static_cast<int>(detail::kInfoFieldCount) + kAdmissionColumnCount;
  if (sqlite3_column_int(s, flag) == 1) info.credits = read_credits(s, flag + 1, op);
  return info;
}

// The rate limits as insert() and replace() write them, checked to read back: a limit
// that breaks a rule of RateLimit is refused rather than written as a corrupt row.
std::string checked_rate_limits(const std::vector<RateLimit>& limits, const char* op) {
  std::string text = encode_rate_limits(limits);
  if (!limits.empty()) {
    try {
      (void)decode_rate_limits(text, op);
    } catch (const Error&) {
      throw Error(
          ErrorCode::invalid_argument,
          fmt::format("SqliteStore {} failed: a rate limit breaks a rule of RateLimit", op));
    }
  }
  return text;
}

// The file's absolute name, so that what is opened later (a reader for a new thread,
// the writer again) is the same file after the process changes its working directory.
// As given when the working directory cannot be read.
std::string absolute_name(const std::string& path) {
  std::error_code ec;
  std::filesystem::path name = std::filesystem::absolute(path, ec);
  return ec ? path : name.string();
}

}  // namespace

struct SqliteStore::Impl {
  Impl(const std::string& p, const SqliteStoreOptions& o)
      : path(absolute_name(p)),
        options(o),
        snapshot_max_age(snapshot_age(o.read_snapshot_max_age)),
        readers(snapshot_max_age) {}

  // The option in the clock's unit, clamped (a huge value must not overflow into "off").
  static std::chrono::steady_clock::duration snapshot_age(std::chrono::microseconds age) {
    using steady = std::chrono::steady_clock;
    const auto most =
        std::chrono::duration_cast<std::chrono::microseconds>(steady::duration::max());
    return std::chrono::duration_cast<steady::duration>(
        std::clamp(age, std::chrono::microseconds::zero(), most));
  }

  ~Impl() = default;
  Impl(const Impl&) = delete;
  Impl& operator=(const Impl&) = delete;

  const std::string path;  // absolute: absolute_name()
  const SqliteStoreOptions options;
  const std::chrono::steady_clock::duration snapshot_max_age;
  bool read_only = false;  // The option, or the file turned out not to be writable.

  // The write epoch of this file in this process (doc/sqlite-store.md, rules 5, 7, 8):
  // (1) bumped after every commit and every revision change revision() sees;
  // (2) a find() snapshot begun before the last bump is not reused;
  // (3) its address is identity().
  std::shared_ptr<std::atomic<std::uint64_t>> write_epoch =
      std::make_shared<std::atomic<std::uint64_t>>(0);
  std::atomic<std::uint64_t> last_revision{0};
  std::atomic<bool> revision_known{false};

  // Invariant (1) of write_epoch.
  void bump_epoch() noexcept { write_epoch->fetch_add(1, std::memory_order_release); }

  detail::Mutex writer_mu;
  std::unique_ptr<Writer> writer APIKEYS_GUARDED_BY(writer_mu);  // null when read_only

  // Declared last: its janitor stops, and its idle readers close, first.
  ReaderPool readers;

  // The largest rowid this store has seen (its inserts, a reader's open, a hit): find()
  // draws decoy rowids up to it (rule 12); lowered when a decoy falls past the end
  // (rule 14).
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
    explicit Lease(Impl& impl) : impl_(impl), reader_(impl.readers.take()) {
      // Opening takes file I/O: never under the pool mutex (rule 1).
      if (!reader_) {
        reader_ = std::make_unique<Reader>(impl_.path, impl_.options, impl_.read_only);
        impl_.note_rowid(reader_->read_max_rowid());
      }
    }
    ~Lease() {
      // Rule 3: a call that failed never leaves its snapshot for reuse.
      if (std::uncaught_exceptions() > exceptions_) reader_->end_snapshot();
      const bool open = reader_->in_snapshot();
      std::unique_ptr<Reader> surplus = impl_.readers.put(std::move(reader_));
      if (open && !surplus) impl_.readers.arm_janitor();
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

  // find() and find_for_validation(), reading the fields of `which`.
  std::optional<KeyRecord> find(std::string_view public_key, detail::Columns which);

  // Runs `f(Writer&)` inside one BEGIN IMMEDIATE transaction under writer_mu.
  template <typename F>
  APIKEYS_EXCLUDES(writer_mu)
  auto write(const char* op, F&& f) -> decltype(f(std::declval<Writer&>())) {
    if (read_only) {
      throw Error(ErrorCode::storage,
                  fmt::format("SqliteStore {} failed: the store is read-only", op));
    }
    return translated(op, [&]() -> decltype(f(std::declval<Writer&>())) {
      detail::MutexLock lock(writer_mu);
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
        // Rule 2: if even the rollback failed, drop the stuck connection.
        if (sqlite3_get_autocommit(writer->db.getHandle()) == 0) writer.reset();
        throw;
      }
    });
  }

  // write(), for a write that may call a ChangeAudit: what the audit threw reaches the
  // caller as it was thrown, after the rollback (rule 32).
  template <typename F>
  APIKEYS_EXCLUDES(writer_mu)
  auto audited_write(const char* op, F&& f) -> decltype(f(std::declval<Writer&>())) {
    try {
      return write(op, std::forward<F>(f));
    } catch (const AuditThrew& threw) {
      std::rethrow_exception(threw.error);
    }
  }

  // The key writes. Each plain write is its audited twin with no audit (nullptr): it
  // then reads no before-state and calls nothing (rule 32).
  void insert(const KeyRecord& record, const ChangeAudit* audit);
  WriteResult replace(const Uuid& account_id, const KeyInfo& next, std::uint64_t expected_version,
                      const ChangeAudit* audit);
  WriteResult rotate(const Uuid& account_id, const KeyInfo& old_next,
                     std::uint64_t expected_version, const KeyRecord& successor,
                     const ChangeAudit* audit);
  std::optional<KeyInfo> remove(const Uuid& account_id, const Uuid& key_id,
                                const ChangeAudit* audit);
  std::vector<KeyInfo> revoke_all(const Uuid& account_id, TimePoint at, const ChangeAudit* audit);
  std::optional<KeyInfo> change_credits(const Uuid& account_id, const Uuid& key_id,
                                        const CreditsChange& change, const ChangeAudit* audit);
  std::size_t replace_digests(const std::vector<DigestChange>& changes, const ChangeAudit* audit);
  CreditTake take_credits(const Uuid& lineage_id, std::uint64_t min, std::uint64_t max,
                          TimePoint now, const ChangeAudit* audit);
  // return_credits(), checked against `generation` unless it is null.
  void return_credits(const Uuid& lineage_id, std::uint64_t n, std::int64_t period,
                      const std::uint64_t* generation);
};

SqliteStore::SqliteStore(const std::string& path, SqliteStoreOptions options)
    : impl_(std::make_unique<Impl>(path, options)) {
  if (options.audit_prune_batch == 0 ||
      options.audit_prune_batch > static_cast<std::size_t>(INT64_MAX)) {
    throw Error(ErrorCode::invalid_argument,
                "SqliteStore: audit_prune_batch must be between 1 and 2^63 - 1");
  }
  // ":memory:" and "" give every connection its own private database: the readers
  // would never see the writer's rows.
  if (path.empty() || path == ":memory:") {
    throw Error(ErrorCode::storage,
                "SqliteStore open failed: in-memory and temporary databases are not supported "
                "(use MemoryStore)");
  }
  // The errors name the file, which operators need: escaped (detail::escape_unprintable),
  // so a name holding control bytes cannot rewrite a terminal or forge a log line.
  const std::string shown = detail::escape_unprintable(path);
  translated(fmt::format("open '{}'", shown), [&] {
    Impl& impl = *impl_;
    const bool may_initialise = options.create_if_missing && !options.read_only;
    // Rule 15: identified read-only before anything (even the switch to WAL) writes.
    std::error_code ec;
    // The file by its absolute name (Impl::path); the messages by the name as given.
    const bool missing =
        std::filesystem::status(impl.path, ec).type() == std::filesystem::file_type::not_found;
    if (!missing) {
      require_usable(identify_read_only(impl.path, options), path, may_initialise);
    } else if (!may_initialise) {
      throw Error(ErrorCode::storage,
                  fmt::format("SqliteStore open '{}' failed: no such file (a read-only open, or "
                              "one with create_if_missing off, creates none)",
                              shown));
    }
    if (!options.read_only) {
      SQLite::Database db = open_connection(impl.path, options, Role::writer, false, missing);
      if (sqlite3_db_readonly(db.getHandle(), "main") == 1) {
        impl.read_only = true;  // A write-protected file: serve reads only.
      } else {
        // Again on this connection, which sees the file as it is now (rule 15); the
        // schema before WAL (rule 21).
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
        detail::MutexLock lock(impl.writer_mu);
        impl.writer = std::make_unique<Writer>(std::move(db));
      }
    } else {
      impl.read_only = true;
    }
    if (impl.read_only) {
      // No writes at all: check the schema on a plain connection (rule 22), then keep a
      // reader in the pool. Not on the reader itself: its statements name the current
      // columns, which an older schema may lack, and preparing them would fail first.
      {
        SQLite::Database probe = open_connection(impl.path, impl.options, Role::reader, true);
        const Identity now = identify(probe);
        require_usable(now, path, false);
        if (now.version < kCurrentVersion) {
          throw Error(ErrorCode::storage,
                      fmt::format("SqliteStore open failed: schema version {} is older than "
                                  "this library's ({}) and the store is read-only; open it "
                                  "read-write once to migrate",
                                  now.version, kCurrentVersion));
        }
        require_apikeys_tables(probe);
      }
      auto reader = std::make_unique<Reader>(impl.path, impl.options, true);
      (void)impl.readers.put(std::move(reader));  // the pool is empty: kept
    }
  });
  impl_->write_epoch = file_epoch(impl_->path);
  impl_->readers.start_janitor();
}

SqliteStore::~SqliteStore() = default;

int SqliteStore::schema_version() noexcept { return kCurrentVersion; }

std::int32_t SqliteStore::application_id() noexcept { return kApplicationId; }

namespace {

// Inserts `record` inside the caller's write transaction, with its lineage's credits when
// it starts its lineage (rule 28). Returns the new row's rowid.
std::int64_t insert_in(Writer& w, const KeyRecord& record, const char* op) {
  const KeyInfo& info = record.info;
  const std::string limits = checked_rate_limits(info.rate_limits, op);
  const std::string lineage =
      info.lineage_id.is_nil() ? std::string() : info.lineage_id.to_string();
  std::int64_t rowid = 0;
  {
    RawUse use(w.insert);
    sqlite3_stmt* s = w.insert.get();
    int rc = bind_record(s, record);
    const int at = static_cast<int>(detail::kFieldCount) + 1;
    if (rc == SQLITE_OK) {
      rc = info.lineage_id.is_nil()
               ? sqlite3_bind_null(s, at)
               : sqlite3_bind_text(s, at, lineage.data(), static_cast<int>(lineage.size()),
                                   SQLITE_STATIC);
    }
    if (rc != SQLITE_OK) throw SQLite::Exception(w.db.getHandle(), rc);
    w.insert.bind(at + 1, limits);
    (void)w.insert.step();
    rowid = sqlite3_last_insert_rowid(w.db.getHandle());
  }
  if (info.credits && info.lineage() == info.key_id) {
    const std::string id = info.key_id.to_string();
    RawUse use(w.insert_credits);
    w.insert_credits.bind(1, id);
    const int rc = bind_credits(w.insert_credits.get(), *info.credits);
    if (rc != SQLITE_OK) throw SQLite::Exception(w.db.getHandle(), rc);
    (void)w.insert_credits.step();
  }
  return rowid;
}

}  // namespace

// One statement for a hit and a miss alike (rules 12-14); `which` says which fields
// are read (Columns::all, or Columns::verdict for find_for_validation()).
std::optional<KeyRecord> SqliteStore::Impl::find(std::string_view public_key,
                                                 detail::Columns which) {
  Lease r(*this);
  r->use_snapshot(snapshot_max_age, write_epoch->load(std::memory_order_acquire));
  RawStatement& s = which == detail::Columns::verdict ? r->find_for_validation : r->find;
  RawUse use(s);
  s.bind(1, public_key);
  s.bind(2, r->decoy_rowid(max_rowid.load(std::memory_order_relaxed)));
  if (!s.step()) {
    // Rule 14: the decoy fell past the end (or the store is empty).
    sqlite3_reset(s.get());
    const std::int64_t last = r->read_max_rowid();
    max_rowid.store(last, std::memory_order_relaxed);
    if (last == 0) return std::nullopt;  // empty: no such key, no decoy row
    s.bind(2, std::int64_t{1});
    if (!s.step()) return std::nullopt;  // emptied meanwhile
  }
  const bool hit = sqlite3_column_int(s.get(), 0) == 1;
  const auto read = [&](KeyRecord& record) {
    read_record(s.get(), "find", kFindFirstField, public_key, record, which);
    read_admission(s.get(), find_admission_column(which), "find", record.info, true);
    // Presence only (Store::find()): the Validator asks whether there are credits. Any
    // value but 0 (a damaged flag) counts as credits: the charge then reads key_credits.
    if (sqlite3_column_int(s.get(), find_credits_column(which)) != 0) {
      record.info.credits = Credits{};
    }
  };
  KeyRecord record;
  if (!hit) {
    ++detail::decoy_reads();
    // Rules 12 and 13: decoded like a hit, then dropped; damage does not fail the miss.
    try {
      read(record);
    } catch (const Error&) {
    }
    return std::nullopt;
  }
  note_rowid(sqlite3_column_int64(s.get(), 1));
  read(record);
  return record;
}

void SqliteStore::insert(const KeyRecord& record) { impl_->insert(record, nullptr); }

void SqliteStore::insert_audited(const KeyRecord& record, const ChangeAudit& audit) {
  impl_->insert(record, &audit);
}

std::optional<KeyRecord> SqliteStore::find(std::string_view public_key) {
  return translated("find", [&] { return impl_->find(public_key, detail::Columns::all); });
}

std::optional<KeyRecord> SqliteStore::find_for_validation(std::string_view public_key) {
  return translated("find", [&] { return impl_->find(public_key, detail::Columns::verdict); });
}

std::vector<KeyInfo> SqliteStore::list(const Uuid& account_id) {
  const std::string account = account_id.to_string();
  return translated("list", [&] {
    std::vector<KeyInfo> out;
    Impl::Lease r(*impl_);
    r->end_snapshot();  // rule 4
    RawStatement& s = r->list;
    RawUse use(s);
    s.bind(1, account);
    while (s.step()) out.push_back(read_full_info(s.get(), "list"));
    return out;
  });
}

namespace {

// Steps a statement to completion (so COMMIT finds nothing in progress) and returns its
// row, if any, decoded by `read`. At most one row: key_id is the primary key.
std::optional<KeyInfo> step_returning(RawStatement& s, const char* op,
                                      KeyInfo (*read)(sqlite3_stmt*, const char*)) {
  std::optional<KeyInfo> row;
  while (s.step()) {
    if (!row) row = read(s.get(), op);
  }
  return row;
}

// The credits of `lineage` as stored, read inside the caller's transaction.
std::optional<Credits> credits_in(Writer& w, const Uuid& lineage, const char* op) {
  const std::string id = lineage.to_string();
  RawUse use(w.credits);
  w.credits.bind(1, id);
  std::optional<Credits> out;
  while (w.credits.step()) {
    if (!out) out = read_credits(w.credits.get(), 0, op);
  }
  return out;
}

// `info` (a RETURNING row) with its lineage's credits as stored.
KeyInfo with_credits(Writer& w, KeyInfo info, const char* op) {
  info.credits = credits_in(w, info.lineage(), op);
  return info;
}

// One revision step for a change of `public_key`, with its log row, in the caller's
// transaction (rule 9). The caller prunes the log afterwards (prune_changes()).
void log_change(Writer& w, const char* op, const std::string& public_key) {
  {
    StatementUse use(w.bump_revision);
    if (w.bump_revision.exec() != 1) corrupt(op, "apikeys_meta has no row");
  }
  StatementUse use(w.log_change);
  w.log_change.bindNoCopy(1, public_key);
  w.log_change.exec();
}

// Drops the log rows older than the newest kChangeLogSize steps (rule 10).
void prune_changes(Writer& w) {
  StatementUse use(w.prune_changes);
  w.prune_changes.bind(1, static_cast<std::int64_t>(SqliteStore::kChangeLogSize));
  w.prune_changes.exec();
}

// One revision step for a change of `public_key`, logged and pruned (rules 9 and 10).
void bump_revision(Writer& w, const char* op, const std::string& public_key) {
  log_change(w, op, public_key);
  prune_changes(w);
}

// Binds `next`'s replaced fields to replace_sql()'s ?1 .. ?8 (kReplacedFields, in table
// order); returns SQLITE_OK or the first failure's code. REQUIRES: `next` outlives the step.
int bind_replaced(sqlite3_stmt* s, const KeyInfo& next) {
  RecordBinder binder(s);
  detail::for_each_info_field(next, [&binder](const detail::RecordField& f, const auto& value) {
    if (is_replaced(f)) binder(f, value);
  });
  return binder.rc();
}

// The key `key` of `account` as it is now, through the writer (inside its transaction).
std::optional<KeyInfo> get_in(Writer& w, const std::string& key, const std::string& account,
                              const char* op) {
  RawUse use(w.get);
  w.get.bind(1, key);
  w.get.bind(2, account);
  return step_returning(w.get, op, read_full_info);
}

// replace()'s compare-and-set inside the caller's write transaction: the guarded UPDATE,
// and on no row a read that tells not_found from conflict (rule 23). An applied change
// takes a revision step and a log row (rules 9 and 10).
WriteResult replace_in(Writer& w, const std::string& account, const KeyInfo& next,
                       std::uint64_t expected_version, const char* op) {
  const std::string key = next.key_id.to_string();
  WriteResult result;
  // A version past the column's range matches no row: the key is then reported as it is.
  if (expected_version <= static_cast<std::uint64_t>(std::numeric_limits<std::int64_t>::max())) {
    const std::string limits = checked_rate_limits(next.rate_limits, op);
    std::optional<KeyInfo> now;
    {
      RawUse use(w.replace);
      const int rc = bind_replaced(w.replace.get(), next);
      if (rc != SQLITE_OK) throw SQLite::Exception(w.db.getHandle(), rc);
      w.replace.bind(9, key);
      w.replace.bind(10, account);
      w.replace.bind(11, static_cast<std::int64_t>(expected_version));
      w.replace.bind(12, limits);
      now = step_returning(w.replace, op, read_key_info);
    }
    if (now) {
      bump_revision(w, op, now->public_key);
      result.outcome = WriteOutcome::applied;
      result.key = with_credits(w, std::move(*now), op);
      return result;
    }
  }
  if (std::optional<KeyInfo> as_is = get_in(w, key, account, op)) {
    result.outcome = WriteOutcome::conflict;
    result.key = std::move(*as_is);
  }
  return result;
}

// Writes `event` into audit_events inside the caller's write transaction, every field
// as given (rule 33). A duplicate event_id throws (already_exists): the change rolls back.
void insert_event(Writer& w, const AuditEvent& event) {
  const std::string event_id = event.event_id.to_string();
  const std::string account = event.account_id.to_string();
  const std::string key = event.key_id.to_string();
  RawStatement& s = w.insert_audit;
  RawUse use(s);
  s.bind(1, event_id);
  s.bind(2, to_unix_millis(event.time));
  s.bind(3, static_cast<std::int64_t>(event.action));
  s.bind(4, static_cast<std::int64_t>(event.context.actor.type));
  s.bind(5, event.context.actor.id);
  s.bind(6, event.context.actor.detail);
  s.bind(7, event.context.reason);
  s.bind(8, account);
  s.bind(9, key);
  s.bind(10, event.before);
  s.bind(11, event.after);
  (void)s.step();
}

// One key of an audited write going from `before` to `after` (nullptr: created, or
// deleted): the event `audit` builds for it is written in the caller's transaction.
// Nothing when the write is not audited (rule 32).
void audit_change(Writer& w, const ChangeAudit* audit, const KeyInfo* before,
                  const KeyInfo* after) {
  if (audit == nullptr) return;
  std::optional<AuditEvent> event;
  try {
    event = audit->event(before, after);
  } catch (...) {
    throw AuditThrew{std::current_exception()};
  }
  if (event) insert_event(w, *event);
}

// The event of a key just inserted in the caller's transaction, the key read back as
// stored (its lineage's credits included).
void audit_insert(Writer& w, const ChangeAudit* audit, const KeyInfo& inserted, const char* op) {
  if (audit == nullptr) return;
  const std::optional<KeyInfo> stored =
      get_in(w, inserted.key_id.to_string(), inserted.account_id.to_string(), op);
  if (!stored) corrupt(op, "an inserted key does not read back");
  audit_change(w, audit, nullptr, &*stored);
}

// replace_in(), and when `audit` is set the key's event: the key as it was is read first,
// in the same transaction, as get() returns it.
WriteResult replace_audited_in(Writer& w, const std::string& account, const KeyInfo& next,
                               std::uint64_t expected_version, const ChangeAudit* audit,
                               const char* op) {
  std::optional<KeyInfo> before;
  if (audit != nullptr) {
    before = get_in(w, next.key_id.to_string(), account, op);
    if (!before) return WriteResult{};  // not_found: nothing written, nothing recorded
  }
  WriteResult result = replace_in(w, account, next, expected_version, op);
  if (before && result.outcome == WriteOutcome::applied) {
    audit_change(w, audit, &*before, &result.key);
  }
  return result;
}

}  // namespace

std::optional<KeyInfo> SqliteStore::get(const Uuid& account_id, const Uuid& key_id) {
  const std::string key = key_id.to_string();
  const std::string account = account_id.to_string();
  return translated("get", [&] {
    Impl::Lease r(*impl_);
    r->end_snapshot();  // rule 4
    RawUse use(r->get);
    r->get.bind(1, key);
    r->get.bind(2, account);
    return step_returning(r->get, "get", read_full_info);
  });
}

std::vector<KeyInfo> SqliteStore::list_page(const Uuid& account_id,
                                            const std::optional<PagePosition>& after,
                                            std::size_t limit, std::optional<KeyStatus> status) {
  if (limit == 0) return {};
  const std::string account = account_id.to_string();
  const std::string after_key = after ? after->key_id.to_string() : std::string();
  return translated("list_page", [&] {
    std::vector<KeyInfo> out;
    Impl::Lease r(*impl_);
    r->end_snapshot();  // rule 4
    // Rule 26: one keyset query on the page index.
    RawStatement& s = r->page_statement(after.has_value(), status.has_value());
    RawUse use(s);
    s.bind(1, account);
    const auto most = static_cast<std::size_t>(std::numeric_limits<std::int64_t>::max());
    s.bind(2, static_cast<std::int64_t>(std::min(limit, most)));
    int next = 3;
    if (after) {
      s.bind(next++, to_unix_millis(after->created_at));
      s.bind(next++, after_key);
    }
    if (status) s.bind(next, static_cast<std::int64_t>(*status));
    while (s.step()) out.push_back(read_full_info(s.get(), "list_page"));
    return out;
  });
}

void SqliteStore::Impl::insert(const KeyRecord& record, const ChangeAudit* audit) {
  audited_write("insert", [&](Writer& w) {
    note_rowid(insert_in(w, record, "insert"));
    audit_insert(w, audit, record.info, "insert");
  });
}

WriteResult SqliteStore::replace(const Uuid& account_id, const KeyInfo& next,
                                 std::uint64_t expected_version) {
  return impl_->replace(account_id, next, expected_version, nullptr);
}

WriteResult SqliteStore::replace_audited(const Uuid& account_id, const KeyInfo& next,
                                         std::uint64_t expected_version, const ChangeAudit& audit) {
  return impl_->replace(account_id, next, expected_version, &audit);
}

WriteResult SqliteStore::Impl::replace(const Uuid& account_id, const KeyInfo& next,
                                       std::uint64_t expected_version, const ChangeAudit* audit) {
  const std::string account = account_id.to_string();
  return audited_write("replace", [&](Writer& w) {
    return replace_audited_in(w, account, next, expected_version, audit, "replace");
  });
}

WriteResult SqliteStore::rotate(const Uuid& account_id, const KeyInfo& old_next,
                                std::uint64_t expected_version, const KeyRecord& successor) {
  return impl_->rotate(account_id, old_next, expected_version, successor, nullptr);
}

WriteResult SqliteStore::rotate_audited(const Uuid& account_id, const KeyInfo& old_next,
                                        std::uint64_t expected_version, const KeyRecord& successor,
                                        const ChangeAudit& audit) {
  return impl_->rotate(account_id, old_next, expected_version, successor, &audit);
}

WriteResult SqliteStore::Impl::rotate(const Uuid& account_id, const KeyInfo& old_next,
                                      std::uint64_t expected_version, const KeyRecord& successor,
                                      const ChangeAudit* audit) {
  const std::string account = account_id.to_string();
  return audited_write("rotate", [&](Writer& w) {
    WriteResult result =
        replace_audited_in(w, account, old_next, expected_version, audit, "rotate");
    if (result.outcome != WriteOutcome::applied) return result;
    // Rule 24: a duplicate successor throws (already_exists); the transaction, the
    // replace above and its event included, rolls back and nothing is written. The
    // successor has the old key's lineage: it shares its credits and creates none
    // (rule 28).
    note_rowid(insert_in(w, successor, "rotate"));
    audit_insert(w, audit, successor.info, "rotate");
    return result;
  });
}

std::vector<KeyInfo> SqliteStore::revoke_all(const Uuid& account_id, TimePoint at) {
  return impl_->revoke_all(account_id, at, nullptr);
}

std::vector<KeyInfo> SqliteStore::revoke_all_audited(const Uuid& account_id, TimePoint at,
                                                     const ChangeAudit& audit) {
  return impl_->revoke_all(account_id, at, &audit);
}

std::vector<KeyInfo> SqliteStore::Impl::revoke_all(const Uuid& account_id, TimePoint at,
                                                   const ChangeAudit* audit) {
  const std::string account = account_id.to_string();
  return audited_write("revoke_all", [&](Writer& w) {
    // Audited: the account's keys as they were, by id, to pair with the rows revoked.
    std::vector<KeyInfo> before;
    if (audit != nullptr) {
      RawUse use(w.list);
      w.list.bind(1, account);
      while (w.list.step()) before.push_back(read_full_info(w.list.get(), "revoke_all"));
      std::sort(before.begin(), before.end(),
                [](const KeyInfo& a, const KeyInfo& b) { return a.key_id < b.key_id; });
    }
    std::vector<KeyInfo> revoked;
    {
      RawUse use(w.revoke_all);
      w.revoke_all.bind(1, static_cast<std::int64_t>(KeyStatus::revoked));
      w.revoke_all.bind(2, to_unix_millis(at));
      w.revoke_all.bind(3, account);
      while (w.revoke_all.step()) {
        revoked.push_back(read_key_info(w.revoke_all.get(), "revoke_all"));
      }
    }
    for (KeyInfo& info : revoked) info = with_credits(w, std::move(info), "revoke_all");
    // One revision step and log row per key (rule 9): changes_since() names each, and an
    // account with more keys than the log keeps moves the revision past what the log
    // reaches, so a poller drops its whole cache instead of missing a key (rule 11).
    for (const KeyInfo& info : revoked) log_change(w, "revoke_all", info.public_key);
    if (!revoked.empty()) prune_changes(w);
    if (audit != nullptr) {
      for (const KeyInfo& info : revoked) {
        const auto was =
            std::lower_bound(before.begin(), before.end(), info.key_id,
                             [](const KeyInfo& k, const Uuid& id) { return k.key_id < id; });
        if (was == before.end() || was->key_id != info.key_id) {
          corrupt("revoke_all", "a revoked key was not there before");
        }
        audit_change(w, audit, &*was, &info);
      }
    }
    return revoked;
  });
}

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
      info = step_returning(w.set_status, "set_status", read_key_info);
    }
    if (info) {
      bump_revision(w, "set_status", info->public_key);
      info = with_credits(w, std::move(*info), "set_status");
    }
    return info;
  });
}

std::optional<KeyInfo> SqliteStore::remove(const Uuid& account_id, const Uuid& key_id) {
  return impl_->remove(account_id, key_id, nullptr);
}

std::optional<KeyInfo> SqliteStore::remove_audited(const Uuid& account_id, const Uuid& key_id,
                                                   const ChangeAudit& audit) {
  return impl_->remove(account_id, key_id, &audit);
}

std::optional<KeyInfo> SqliteStore::Impl::remove(const Uuid& account_id, const Uuid& key_id,
                                                 const ChangeAudit* audit) {
  const std::string key = key_id.to_string();
  const std::string account = account_id.to_string();
  return audited_write("remove", [&](Writer& w) {
    std::optional<KeyInfo> info;
    {
      RawUse use(w.remove);
      w.remove.bind(1, key);
      w.remove.bind(2, account);
      info = step_returning(w.remove, "remove", read_key_info);
    }
    if (!info) return info;
    bump_revision(w, "remove", info->public_key);
    // The key as it was, credits included; they go with the lineage's last key (rule 28).
    info = with_credits(w, std::move(*info), "remove");
    audit_change(w, audit, &*info, nullptr);
    const std::string lineage = info->lineage().to_string();
    RawUse use(w.drop_orphan_credits);
    w.drop_orphan_credits.bind(1, lineage);
    w.drop_orphan_credits.bind(2, account);
    (void)w.drop_orphan_credits.step();
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

std::size_t SqliteStore::replace_digests(const std::vector<DigestChange>& changes) {
  return impl_->replace_digests(changes, nullptr);
}

std::size_t SqliteStore::replace_digests_audited(const std::vector<DigestChange>& changes,
                                                 const ChangeAudit& audit) {
  return impl_->replace_digests(changes, &audit);
}

std::size_t SqliteStore::Impl::replace_digests(const std::vector<DigestChange>& changes,
                                               const ChangeAudit* audit) {
  // A read-only store can never rewrite: say so once (the Validator then stops asking)
  // rather than fail every batch as storage.
  if (read_only) {
    throw Error(ErrorCode::not_supported, "SqliteStore is read-only: digests are not rewritten");
  }
  if (changes.empty()) return 0;
  return audited_write("replace_digests", [&](Writer& w) {
    std::size_t rewritten = 0;
    std::string key;
    SQLite::Statement& s = w.replace_digest;
    for (const DigestChange& change : changes) {
      int rows = 0;
      {
        StatementUse statement_use(s);
        key = change.key_id.to_string();
        s.bindNoCopy(1, change.to.bytes.data(), static_cast<int>(change.to.bytes.size()));
        s.bind(2, static_cast<std::int64_t>(change.to.pepper_id));
        s.bindNoCopy(3, key);
        s.bindNoCopy(4, change.from.bytes.data(), static_cast<int>(change.from.bytes.size()));
        s.bind(5, static_cast<std::int64_t>(change.from.pepper_id));
        // 0 rows: the key is gone or holds another digest; skipped, as documented.
        rows = s.exec();
      }
      if (rows != 1) continue;
      ++rewritten;
      if (audit != nullptr) {
        // Rule 36: the key as it is (a rewrite changes nothing a KeyInfo holds).
        std::optional<KeyInfo> info;
        {
          RawUse use(w.key_by_id);
          w.key_by_id.bind(1, key);
          info = step_returning(w.key_by_id, "replace_digests", read_full_info);
        }
        if (!info) corrupt("replace_digests", "a rewritten key does not read back");
        audit_change(w, audit, &*info, &*info);
      }
    }
    return rewritten;
  });
}

std::vector<PepperCount> SqliteStore::pepper_counts() {
  return translated("pepper_counts", [&] {
    Impl::Lease r(*impl_);
    r->end_snapshot();                             // rule 4
    SQLite::Statement s(r->db, kPepperCountsSql);  // rare: prepared per call
    std::vector<PepperCount> out;
    while (s.executeStep()) {
      const std::int64_t id = s.getColumn(0).getInt64();
      const std::int64_t keys = s.getColumn(1).getInt64();
      if (id < 0 || id > static_cast<std::int64_t>(std::numeric_limits<std::uint32_t>::max())) {
        corrupt("pepper_counts", "pepper_id out of range");
      }
      out.push_back(PepperCount{static_cast<std::uint32_t>(id), static_cast<std::uint64_t>(keys)});
    }
    return out;
  });
}

namespace {

// A read-only store refuses credit writes as not supported (the limiter then applies
// its failure policy) rather than failing each as storage.
void require_writable(bool read_only, const char* op) {
  if (read_only) {
    throw Error(ErrorCode::not_supported,
                fmt::format("SqliteStore is read-only: {} is not supported", op));
  }
}

std::int64_t to_int64(std::uint64_t v) noexcept {
  return static_cast<std::int64_t>(
      std::min<std::uint64_t>(v, static_cast<std::uint64_t>(INT64_MAX)));
}

// Writes `c` as the credits of `lineage`, whole: a balance set with a new generation
// (`new_balance`), else keeping the row's (rule 40).
void put_credits(Writer& w, const std::string& lineage, const Credits& c, bool new_balance) {
  RawUse use(w.put_credits);
  w.put_credits.bind(1, lineage);
  int rc = bind_credits(w.put_credits.get(), c);
  if (rc == SQLITE_OK) rc = sqlite3_bind_int(w.put_credits.get(), 8, new_balance ? 1 : 0);
  if (rc != SQLITE_OK) throw SQLite::Exception(w.db.getHandle(), rc);
  (void)w.put_credits.step();
}

// One run of a take statement (rule 29; `s` is w.take_credits or w.take_unrefilled):
// true, with `take` filled, when it took; false when it matched no row.
bool take_row(RawStatement& s, const std::string& lineage, std::int64_t day, std::int64_t month,
              std::uint64_t min, std::uint64_t max, CreditTake& take) {
  constexpr auto kMax = static_cast<std::int64_t>(KeyPolicyLimits::kMaxCredits);
  RawUse use(s);
  s.bind(1, lineage);
  s.bind(2, day);
  s.bind(3, month);
  s.bind(4, to_int64(min));
  s.bind(5, to_int64(std::max(min, max)));
  bool row = false;
  while (s.step()) {
    if (row) continue;
    row = true;
    sqlite3_stmt* r = s.get();
    const std::int64_t remaining = read_int(r, 0, "take_credits", "credits remaining");
    const std::int64_t taken = read_int(r, 1, "take_credits", "last_take");
    take.period = read_int(r, 2, "take_credits", "refilled_period");
    const std::int64_t interval = read_int(r, 3, "take_credits", "refill_interval");
    const bool refill = sqlite3_column_type(r, 4) != SQLITE_NULL;
    take.generation = static_cast<std::uint64_t>(read_int(r, 5, "take_credits", "generation"));
    if (remaining < 0 || remaining > kMax || taken < 0 || taken > kMax) {
      corrupt("take_credits", "credits out of range");
    }
    if (refill && interval != 0 && interval != 1) {
      corrupt("take_credits", "unknown refill_interval");
    }
    take.outcome = CreditTake::Outcome::taken;
    take.taken = static_cast<std::uint64_t>(taken);
    take.remaining = static_cast<std::uint64_t>(remaining);
    if (refill) {
      take.period_end = refill_period_start(static_cast<RefillInterval>(interval), take.period + 1);
    }
  }
  return row;
}

// A take that matched no row: the balance `stored` is below the minimum. The refill due
// is still written, once per period (rule 29).
CreditTake take_short(Writer& w, const std::string& lineage, const Credits& stored, TimePoint now) {
  const Credits c = refilled(stored, now);
  if (c.refilled_period != stored.refilled_period || c.remaining != stored.remaining) {
    put_credits(w, lineage, c, false);
  }
  CreditTake take;
  take.outcome = CreditTake::Outcome::insufficient;
  take.remaining = c.remaining;
  take.period = c.refilled_period;
  if (c.refill) take.period_end = refill_period_start(c.refill->interval, c.refilled_period + 1);
  return take;
}

// The event of a refill from `stored` to `refilled` about to be written in the caller's
// transaction: the lineage's newest key, with each (rule 36). None when the lineage has
// no key left.
void audit_refill(Writer& w, const ChangeAudit* audit, const std::string& lineage,
                  const Credits& stored, const Credits& refilled) {
  std::optional<KeyInfo> before;
  {
    RawUse use(w.newest_of_lineage);
    w.newest_of_lineage.bind(1, lineage);
    before = step_returning(w.newest_of_lineage, "take_credits", read_full_info);
  }
  if (!before) return;
  before->credits = stored;
  KeyInfo after = *before;
  after.credits = refilled;
  audit_change(w, audit, &*before, &after);
}

}  // namespace

CreditTake SqliteStore::take_credits(const Uuid& lineage_id, std::uint64_t min, std::uint64_t max,
                                     TimePoint now) {
  return impl_->take_credits(lineage_id, min, max, now, nullptr);
}

CreditTake SqliteStore::take_credits_audited(const Uuid& lineage_id, std::uint64_t min,
                                             std::uint64_t max, TimePoint now,
                                             const ChangeAudit& audit) {
  return impl_->take_credits(lineage_id, min, max, now, &audit);
}

CreditTake SqliteStore::Impl::take_credits(const Uuid& lineage_id, std::uint64_t min,
                                           std::uint64_t max, TimePoint now,
                                           const ChangeAudit* audit) {
  require_writable(read_only, "take_credits");
  const std::string lineage = lineage_id.to_string();
  const std::int64_t day = refill_period(RefillInterval::daily, now);
  const std::int64_t month = refill_period(RefillInterval::monthly, now);
  return audited_write("take_credits", [&](Writer& w) {
    CreditTake take;
    // Rule 29: one guarded UPDATE; concurrent takers, in any process, serialize on it.
    // Audited, it takes only when no refill is due (rule 36): the same one statement
    // when none is.
    if (take_row(audit == nullptr ? w.take_credits : w.take_unrefilled, lineage, day, month, min,
                 max, take)) {
      return take;
    }
    const std::optional<Credits> stored = credits_in(w, lineage_id, "take_credits");
    if (!stored) return take;  // no_credits
    if (audit != nullptr) {
      const Credits c = refilled(*stored, now);
      if (c.refilled_period != stored->refilled_period) {
        // A refill is due: its event first, then the take that writes it.
        audit_refill(w, audit, lineage, *stored, c);
        if (take_row(w.take_credits, lineage, day, month, min, max, take)) return take;
      }
    }
    return take_short(w, lineage, *stored, now);
  });
}

void SqliteStore::return_credits(const Uuid& lineage_id, std::uint64_t n, std::int64_t period) {
  impl_->return_credits(lineage_id, n, period, nullptr);
}

void SqliteStore::return_credits_checked(const Uuid& lineage_id, std::uint64_t n,
                                         std::int64_t period, std::uint64_t generation) {
  impl_->return_credits(lineage_id, n, period, &generation);
}

void SqliteStore::Impl::return_credits(const Uuid& lineage_id, std::uint64_t n, std::int64_t period,
                                       const std::uint64_t* generation) {
  require_writable(read_only, "return_credits");
  if (n == 0) return;
  const std::string lineage = lineage_id.to_string();
  write("return_credits", [&](Writer& w) {
    RawStatement& s = generation != nullptr ? w.return_credits_checked : w.return_credits;
    RawUse use(s);
    s.bind(1, lineage);
    s.bind(2, to_int64(std::min(n, KeyPolicyLimits::kMaxCredits)));
    s.bind(3, period);
    if (generation != nullptr) s.bind(4, static_cast<std::int64_t>(*generation));
    (void)s.step();  // 0 rows: refilled or set since, or gone: nothing to do
  });
}

std::optional<KeyInfo> SqliteStore::change_credits(const Uuid& account_id, const Uuid& key_id,
                                                   const CreditsChange& change) {
  return impl_->change_credits(account_id, key_id, change, nullptr);
}

std::optional<KeyInfo> SqliteStore::change_credits_audited(const Uuid& account_id,
                                                           const Uuid& key_id,
                                                           const CreditsChange& change,
                                                           const ChangeAudit& audit) {
  return impl_->change_credits(account_id, key_id, change, &audit);
}

std::optional<KeyInfo> SqliteStore::Impl::change_credits(const Uuid& account_id, const Uuid& key_id,
                                                         const CreditsChange& change,
                                                         const ChangeAudit* audit) {
  require_writable(read_only, "change_credits");
  const std::string key = key_id.to_string();
  const std::string account = account_id.to_string();
  const char* op = "change_credits";
  return audited_write(op, [&](Writer& w) -> std::optional<KeyInfo> {
    std::optional<KeyInfo> info = get_in(w, key, account, op);
    if (!info) return std::nullopt;
    std::optional<KeyInfo> before;
    if (audit != nullptr) before = info;
    bool wrote = true;  // false only for removing credits the lineage does not have
    const Uuid lineage_id = info->lineage();
    const std::string lineage = lineage_id.to_string();
    const std::optional<Credits> stored = info->credits;
    bool flipped = false;  // credits created or removed: the lineage's verdicts change
    switch (change.op) {
      case CreditsOp::remove:
        if (stored) {
          RawUse use(w.delete_credits);
          w.delete_credits.bind(1, lineage);
          (void)w.delete_credits.step();
          flipped = true;
        }
        wrote = flipped;
        break;
      case CreditsOp::add: {
        if (!stored) throw Error(ErrorCode::conflict, "the key has no credits to add to");
        Credits c = refilled(*stored, change.at);
        c.remaining = detail::add_clamped(c.remaining, change.delta);
        put_credits(w, lineage, c, false);
        break;
      }
      case CreditsOp::configure: {
        if (!stored && !change.remaining) {
          throw Error(ErrorCode::conflict, "the key has no credits: give a balance");
        }
        const Credits c =
            detail::configured(stored ? refilled(*stored, change.at) : Credits{}, change);
        put_credits(w, lineage, c, true);
        flipped = !stored;
        break;
      }
    }
    if (flipped) {
      // Rule 31: a revision step and log row for every key of the lineage.
      std::vector<std::string> keys;
      {
        RawUse use(w.lineage_keys);
        w.lineage_keys.bind(1, account);
        w.lineage_keys.bind(2, lineage);
        while (w.lineage_keys.step()) {
          keys.emplace_back(read_text_view(w.lineage_keys.get(), 0, op, "public_key"));
        }
      }
      for (const std::string& public_key : keys) log_change(w, op, public_key);
      if (!keys.empty()) prune_changes(w);
    }
    info->credits = credits_in(w, lineage_id, op);
    if (before && wrote) audit_change(w, audit, &*before, &*info);
    return info;
  });
}

namespace {

// The millisecond at or after `t`: the first stored time (whole milliseconds) that is not
// before it.
std::int64_t ceil_millis(TimePoint t) noexcept {
  return std::chrono::ceil<std::chrono::milliseconds>(t.time_since_epoch()).count();
}

Uuid read_uuid(sqlite3_stmt* s, int i, const char* op, const char* what) {
  const std::optional<Uuid> id = Uuid::parse(read_text_view(s, i, op, what));
  if (!id) corrupt(op, what);
  return *id;
}

// A stable one-byte code (AuditAction, ActorType): kept as stored, a value this library
// does not know included (a newer one wrote it); out of a byte's range is corrupt.
std::uint8_t read_code(sqlite3_stmt* s, int i, const char* op, const char* what) {
  const std::int64_t v = read_int(s, i, op, what);
  if (v < 0 || v > std::numeric_limits<std::uint8_t>::max()) corrupt(op, what);
  return static_cast<std::uint8_t>(v);
}

// An audit_events row, in the column order of kAuditColumns.
AuditEvent read_event(sqlite3_stmt* s) {
  const char* op = "audit_events";
  AuditEvent e;
  e.event_id = read_uuid(s, 0, op, "event_id");
  e.time = from_unix_millis(read_int(s, 1, op, "time_ms"));
  e.action = static_cast<AuditAction>(read_code(s, 2, op, "action"));
  e.context.actor.type = static_cast<ActorType>(read_code(s, 3, op, "actor_type"));
  e.context.actor.id = std::string(read_text_view(s, 4, op, "actor_id"));
  e.context.actor.detail = std::string(read_text_view(s, 5, op, "actor_detail"));
  e.context.reason = std::string(read_text_view(s, 6, op, "reason"));
  e.account_id = read_uuid(s, 7, op, "account_id");
  e.key_id = read_uuid(s, 8, op, "key_id");
  e.before = std::string(read_text_view(s, 9, op, "before_json"));
  e.after = std::string(read_text_view(s, 10, op, "after_json"));
  return e;
}

}  // namespace

std::vector<AuditEvent> SqliteStore::audit_events(const Uuid& account_id, const AuditRange& range) {
  if (range.limit == 0) return {};
  const std::string account = account_id.to_string();
  const std::string key = range.key_id ? range.key_id->to_string() : std::string();
  // The position: strictly after (time, event_id) in the order. A time between two
  // milliseconds has no event at it: the page then starts at the millisecond before.
  std::int64_t after_ms = 0;
  std::string after_id;
  if (range.after) {
    after_ms = ceil_millis(range.after->time);
    if (from_unix_millis(after_ms) == range.after->time) {
      after_id = range.after->event_id.to_string();
    }  // else: event_id < '' matches nothing, so only time_ms < after_ms remains
  }
  return translated("audit_events", [&] {
    std::vector<AuditEvent> out;
    Impl::Lease r(*impl_);
    r->end_snapshot();  // rule 4
    // Rule 34: an operator's paging, not the hot path: prepared per call.
    RawStatement s(r->db, audit_events_sql(range.key_id.has_value(), range.since.has_value(),
                                           range.after.has_value())
                              .c_str());
    const auto most = static_cast<std::size_t>(std::numeric_limits<std::int64_t>::max());
    s.bind(1, account);
    s.bind(2, static_cast<std::int64_t>(std::min(range.limit, most)));
    if (range.key_id) s.bind(3, key);
    if (range.since) s.bind(4, ceil_millis(*range.since));
    if (range.after) {
      s.bind(5, after_ms);
      s.bind(6, after_id);
    }
    while (s.step()) out.push_back(read_event(s.get()));
    return out;
  });
}

std::uint64_t SqliteStore::prune_audit(TimePoint before) {
  const std::int64_t before_ms = ceil_millis(before);
  const auto batch = static_cast<std::int64_t>(impl_->options.audit_prune_batch);
  std::uint64_t total = 0;
  for (;;) {
    // Rule 35: batches on the time index, each its own write transaction; no key
    // changes, so no revision step.
    const std::uint64_t n = impl_->write("prune_audit", [&](Writer& w) {
      RawUse use(w.prune_audit);
      w.prune_audit.bind(1, before_ms);
      w.prune_audit.bind(2, batch);
      (void)w.prune_audit.step();
#if SQLITE_VERSION_NUMBER >= 3037000
      return static_cast<std::uint64_t>(sqlite3_changes64(w.db.getHandle()));
#else
      return static_cast<std::uint64_t>(sqlite3_changes(w.db.getHandle()));
#endif
    });
    total += n;
    if (n < static_cast<std::uint64_t>(batch)) return total;
  }
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
    // Rule 7: a revision change (another process's revoke) bumps the write epoch.
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
    // Rule 11: one read transaction, so the revision and the log rows agree.
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
