// Private to SqliteStore: a query-only reader connection with its prepared statements
// and its find() snapshot, and the pool of idle readers with the janitor thread that
// ends the snapshots of readers left idle.
// See doc/sqlite-store.md, rules on read snapshots.
// Thread-safety: a Reader is used by one thread at a time (the pool hands it out);
// ReaderPool is thread-safe. Ownership: the pool owns its idle readers; a reader taken
// from it belongs to the caller until put back.
#ifndef APIKEYS_SRC_SQLITE_READER_POOL_HPP
#define APIKEYS_SRC_SQLITE_READER_POOL_HPP

#include <sqlite3.h>

#include <SQLiteCpp/Database.h>
#include <SQLiteCpp/Statement.h>

#include <atomic>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "apikeys/sqlite_store.hpp"
#include "sqlite/queries.hpp"
#include "sqlite/statement.hpp"
#include "thread_annotations.hpp"

namespace apikeys::detail::sqlite {

// Idle reader connections kept open; more may exist while checked out.
constexpr std::size_t kMaxIdleReaders = 16;

struct Reader {
  Reader(const std::string& path, const SqliteStoreOptions& o, bool read_only)
      : db(open_connection(path, o, Role::reader, read_only)),
        find(db, find_sql(Columns::all).c_str()),
        find_for_validation(db, find_sql(Columns::verdict).c_str()),
        list(db, list_sql().c_str()),
        get(db, get_sql().c_str()),
        page(db, list_page_sql(false, false).c_str()),
        page_after(db, list_page_sql(true, false).c_str()),
        page_status(db, list_page_sql(false, true).c_str()),
        page_after_status(db, list_page_sql(true, true).c_str()),
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

  // find()'s read transaction (doc/sqlite-store.md, rule 5): reused while
  // (1) it is younger than `max_age` (0: a transaction per statement), and
  // (2) the write epoch is still `epoch`, the value it began under;
  // else a new one begins.
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

  // A rowid for find()'s decoy read, uniform over 1..bound (rule 12).
  std::int64_t decoy_rowid(std::int64_t bound) noexcept {
    rng ^= rng << 13;
    rng ^= rng >> 7;
    rng ^= rng << 17;
    return bound <= 1 ? 1 : 1 + static_cast<std::int64_t>(rng % static_cast<std::uint64_t>(bound));
  }

  // list_page()'s statement for a page that starts `after` a position and/or keeps only
  // one `status` (see list_page_sql()).
  RawStatement& page_statement(bool after, bool status) noexcept {
    if (after) return status ? page_after_status : page_after;
    return status ? page_status : page;
  }

  SQLite::Database db;  // Declared first: statements are finalized before it closes.
  RawStatement find;
  RawStatement find_for_validation;  // find()'s, reading only the verdict's fields
  RawStatement list;
  RawStatement get;
  RawStatement page;
  RawStatement page_after;
  RawStatement page_status;
  RawStatement page_after_status;
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

// The idle readers of one store, and the janitor that ends their snapshots
// (doc/sqlite-store.md, rules 1, 6 and 39):
// (1) at most kHomeSlots + kMaxIdleReaders are kept: one in each home slot, the rest in
//     capacity reserved up front; put() never allocates;
// (2) nothing opens or closes a connection under pool_mu_;
// (3) the janitor runs only while some idle reader may hold a snapshot, and ends those
//     older than the store's read_snapshot_max_age every kJanitorPeriod;
// (4) a home slot's reader is tended in place: the slot holds tending() until the
//     janitor puts the reader back, and take() waits for it meanwhile (a bounded
//     number of yields, then it goes to the shared list).
class ReaderPool {
 public:
  explicit ReaderPool(std::chrono::steady_clock::duration snapshot_max_age);
  ~ReaderPool();  // Stops the janitor.
  ReaderPool(const ReaderPool&) = delete;
  ReaderPool& operator=(const ReaderPool&) = delete;

  // Starts the janitor when snapshots are kept. Called once, by the store's constructor.
  void start_janitor();

  // An idle reader, or null when there is none (the caller opens one, outside the pool's
  // mutex: opening takes file I/O).
  std::unique_ptr<Reader> take() APIKEYS_EXCLUDES(pool_mu_);

  // Puts `reader` back; returns it instead when the pool is full, for the caller to
  // close outside the mutex (invariants 1 and 2).
  std::unique_ptr<Reader> put(std::unique_ptr<Reader> reader) noexcept APIKEYS_EXCLUDES(pool_mu_);

  // Called when a reader with an open snapshot goes back to the pool.
  void arm_janitor() APIKEYS_EXCLUDES(janitor_mu_);

 private:
  void run_janitor() APIKEYS_EXCLUDES(janitor_mu_, pool_mu_);

  const std::chrono::steady_clock::duration snapshot_max_age_;

  // The janitor (invariant 3).
  static constexpr std::chrono::milliseconds kJanitorPeriod{100};
  Mutex janitor_mu_;
  CondVar janitor_cv_;
  bool stopping_ APIKEYS_GUARDED_BY(janitor_mu_) = false;
  std::atomic<bool> janitor_armed_{false};
  std::thread janitor_;  // started by start_janitor() when snapshots are kept

  // Rule 39: a thread puts its reader back in its home slot and takes it from there, so
  // a reader stays with the thread (and the core) that used it last. A slot owns the
  // reader it holds; a compare-and-swap takes it, without pool_mu_.
  static constexpr std::size_t kHomeSlots = 8;
  struct alignas(64) Home {
    std::atomic<Reader*> reader{nullptr};
  };
  static std::size_t home_of_this_thread() noexcept;
  // What a home slot holds while the janitor tends its reader (invariant 4): an address
  // that is no Reader's.
  static Reader* tending() noexcept;
  // On the heap: a 64-byte-aligned array inside the pool would pad the store that holds it.
  const std::unique_ptr<Home[]> homes_ = std::make_unique<Home[]>(kHomeSlots);

  Mutex pool_mu_;
  // Invariant 1.
  std::vector<std::unique_ptr<Reader>> idle_ APIKEYS_GUARDED_BY(pool_mu_);

  // put() into idle_ (invariant 1): returns `reader` when that is full.
  std::unique_ptr<Reader> put_shared(std::unique_ptr<Reader> reader) noexcept
      APIKEYS_EXCLUDES(pool_mu_);
};

}  // namespace apikeys::detail::sqlite

#endif  // APIKEYS_SRC_SQLITE_READER_POOL_HPP
