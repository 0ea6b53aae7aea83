// apikeys::SqliteStore keeps records in one SQLite file (WAL mode). Several processes
// may open the same file; revision() lets their validators see each other's changes.
// Thread-safety: every method is safe from many threads; reads use a pool of
// connections, writes one connection under a mutex. Ownership: owns its connections.
#ifndef APIKEYS_SQLITE_STORE_HPP
#define APIKEYS_SQLITE_STORE_HPP

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "apikeys/export.hpp"
#include "apikeys/store.hpp"

namespace apikeys {

/// Options for SqliteStore. Every field states its default.
struct SqliteStoreOptions {
  /// How long a statement waits on another connection's lock before failing with
  /// Error(busy). Default 5 s.
  std::chrono::milliseconds busy_timeout{5000};
  /// Page cache per connection, in KiB. Default 16 MiB.
  std::size_t cache_size_kib = std::size_t{16} * 1024;
  /// Bytes of the file to memory-map for reads (0 turns mmap off); SQLite caps it at
  /// its build's SQLITE_MAX_MMAP_SIZE (just under 2 GiB by default). Reads past the
  /// mapped part go through read() and the page cache above. Mapping costs address
  /// space, not memory: pages come in as they are read, and are the kernel's page cache.
  /// Each connection (the writer and every reader) maps its own: lower it where address
  /// space is short (a 32-bit process, `ulimit -v`). Default 2 GiB (a cold find() at
  /// 10,000,000 keys took 7.6 µs instead of 10.7 with 256 MiB; BENCHMARKS.md).
  std::size_t mmap_size = std::size_t{2} * 1024 * 1024 * 1024;
  /// synchronous=FULL when true (every commit survives power loss), NORMAL when false
  /// (WAL keeps the file consistent; the last commits may be lost on power loss, never
  /// on a process crash). Default true.
  bool durable = true;
  /// Open the file read-only (no schema creation or migration; nothing is ever written
  /// to the file). Default false.
  bool read_only = false;
  /// Initialise a new database when the file is missing or empty (0 bytes). When false,
  /// such a file is refused with Error(storage) and left as it was (a missing one is not
  /// created). A file with any other content is never initialised, whatever this says.
  /// Ignored when read_only (which never creates). Default true.
  bool create_if_missing = true;
  /// How long find() may keep reading from one snapshot of the file (one read
  /// transaction kept open across calls) before it takes a new one. Never reused after a
  /// write through this store, nor after revision() saw another process's change; other
  /// processes' (and other SqliteStore objects') writes otherwise show within this bound.
  /// Taking a snapshot locks the shared WAL index twice, which is half of a cold find()
  /// and what threads contend for. Idle snapshots are ended by a background thread
  /// within 0.1 s, so they do not pin the WAL. 0: a snapshot per call, no thread.
  /// Default 1 ms.
  std::chrono::microseconds read_snapshot_max_age{1000};
  /// Most audit events prune_audit() deletes in one write transaction: a prune of a long
  /// backlog holds the write lock this long at a time, not for the whole backlog, so
  /// other writers wait at most one batch. At least 1. Default 10,000.
  std::size_t audit_prune_batch = 10'000;
};

/// A Store in one SQLite database file, shareable between processes.
class APIKEYS_EXPORT SqliteStore final : public Store {
 public:
  /// Opens the database at `path` (initialising a missing or empty file, unless
  /// options.create_if_missing is false) and migrates its schema to the current version.
  /// `path` is a file name, never an SQLite URI: "file:keys.db?mode=ro" names a file of
  /// that name in the working directory, whether or not SQLite was built to read URIs.
  /// A relative name is made absolute here: every connection the store opens later
  /// opens this file, whatever the working directory is by then.
  ///
  /// The file is identified, on a read-only connection, before anything is written to
  /// it. It is an apikeys database when its header's application_id (PRAGMA
  /// application_id) is application_id(), which this library sets when it creates the
  /// schema, or, for a file written by a release from before that marker, when it has no
  /// application_id and exactly the schema of that release (user_version 1 or 2, the
  /// apikeys tables and indexes and nothing else but SQLite's own); such a file gets the
  /// marker in its first migration transaction (one to which someone added a table or
  /// index is refused too: mark it by hand, `PRAGMA application_id = 1634756971`, once
  /// you know it is an apikeys database). Any other file (another application's
  /// database, whatever its user_version, or not an SQLite file at all) is refused with
  /// Error(storage) "not an apikeys database" and left byte for byte unchanged: no WAL
  /// switch, no pragma written.
  ///
  /// Throws Error(storage) if the file cannot be opened, is not an apikeys database, is
  /// missing or empty and may not be initialised, or has a newer schema than this
  /// library knows; Error(busy) if it stays locked past the busy timeout.
  explicit SqliteStore(const std::string& path, SqliteStoreOptions options = {});
  ~SqliteStore() override;

  void insert(const KeyRecord& record) override;
  [[nodiscard]] std::optional<KeyRecord> find(std::string_view public_key) override;
  [[nodiscard]] std::optional<KeyRecord> find_for_validation(std::string_view public_key) override;
  [[nodiscard]] std::vector<KeyInfo> list(const Uuid& account_id) override;
  std::optional<KeyInfo> set_status(const Uuid& account_id, const Uuid& key_id,
                                    KeyStatus status) override;
  std::optional<KeyInfo> remove(const Uuid& account_id, const Uuid& key_id) override;
  [[nodiscard]] std::optional<KeyInfo> get(const Uuid& account_id, const Uuid& key_id) override;
  /// One indexed query that starts at the position (keyset pagination): a page costs its
  /// own rows however deep it starts.
  [[nodiscard]] std::vector<KeyInfo> list_page(const Uuid& account_id,
                                               const std::optional<PagePosition>& after,
                                               std::size_t limit,
                                               std::optional<KeyStatus> status) override;
  /// One guarded UPDATE in one transaction, with its revision step and change log row.
  WriteResult replace(const Uuid& account_id, const KeyInfo& next,
                      std::uint64_t expected_version) override;
  /// The replace and the insert in one transaction: both or neither.
  WriteResult rotate(const Uuid& account_id, const KeyInfo& old_next,
                     std::uint64_t expected_version, const KeyRecord& successor) override;
  /// One UPDATE in one transaction, with a revision step and a change log row per key.
  std::vector<KeyInfo> revoke_all(const Uuid& account_id, TimePoint at) override;
  void record_last_use(const std::vector<LastUse>& uses) override;
  /// One guarded UPDATE per change, the batch in one transaction; no revision step and
  /// no change log row (no verdict changes).
  std::size_t replace_digests(const std::vector<DigestChange>& changes) override;
  /// One GROUP BY over every key (a full scan: an operator's occasional question).
  [[nodiscard]] std::vector<PepperCount> pepper_counts() override;
  /// One guarded UPDATE ... RETURNING in its own write transaction (BEGIN IMMEDIATE):
  /// exact across threads and processes on one file. A read-only store throws
  /// Error(not_supported); a lock held past busy_timeout throws Error(busy).
  CreditTake take_credits(const Uuid& lineage_id, std::uint64_t min, std::uint64_t max,
                          TimePoint now) override;
  /// One guarded UPDATE. A read-only store throws Error(not_supported).
  void return_credits(const Uuid& lineage_id, std::uint64_t n, std::int64_t period) override;
  void return_credits_checked(const Uuid& lineage_id, std::uint64_t n, std::int64_t period,
                              std::uint64_t generation) override;
  /// True: every balance has a generation (CreditTake::generation).
  [[nodiscard]] bool checks_credit_generations() const noexcept override { return true; }
  /// One transaction. A read-only store throws Error(not_supported).
  std::optional<KeyInfo> change_credits(const Uuid& account_id, const Uuid& key_id,
                                        const CreditsChange& change) override;

  /// \name The audit trail
  /// Each `*_audited` write is the write of the same name in the same transaction, with
  /// its events written in it (table audit_events, schema version 6): both commit or
  /// neither. A ChangeAudit that throws rolls the whole write back, and its exception
  /// reaches the caller as it was thrown. A read-only store throws as its writes do.
  /// @{
  [[nodiscard]] bool keeps_audit() const noexcept override { return true; }
  void insert_audited(const KeyRecord& record, const ChangeAudit& audit) override;
  /// Reads the key as it was inside the transaction, then replaces it.
  WriteResult replace_audited(const Uuid& account_id, const KeyInfo& next,
                              std::uint64_t expected_version, const ChangeAudit& audit) override;
  WriteResult rotate_audited(const Uuid& account_id, const KeyInfo& old_next,
                             std::uint64_t expected_version, const KeyRecord& successor,
                             const ChangeAudit& audit) override;
  std::optional<KeyInfo> remove_audited(const Uuid& account_id, const Uuid& key_id,
                                        const ChangeAudit& audit) override;
  /// Reads the account's keys as they were inside the transaction, then revokes them.
  std::vector<KeyInfo> revoke_all_audited(const Uuid& account_id, TimePoint at,
                                          const ChangeAudit& audit) override;
  /// No event when nothing was written (removing credits the lineage does not have).
  std::optional<KeyInfo> change_credits_audited(const Uuid& account_id, const Uuid& key_id,
                                                const CreditsChange& change,
                                                const ChangeAudit& audit) override;
  /// Reads each key it rewrites back inside the transaction for its event.
  std::size_t replace_digests_audited(const std::vector<DigestChange>& changes,
                                      const ChangeAudit& audit) override;
  /// With no refill due, the same one UPDATE as take_credits(); when one is due, reads
  /// the lineage's newest key and writes its event before the take that writes the
  /// refill, in the same transaction.
  CreditTake take_credits_audited(const Uuid& lineage_id, std::uint64_t min, std::uint64_t max,
                                  TimePoint now, const ChangeAudit& audit) override;
  /// One indexed query that starts at the position (keyset pagination), on a pooled
  /// reader. Times are kept in whole milliseconds.
  [[nodiscard]] std::vector<AuditEvent> audit_events(const Uuid& account_id,
                                                     const AuditRange& range) override;
  /// One DELETE in one write transaction; no revision step (no key changes).
  std::uint64_t prune_audit(TimePoint before) override;
  /// @}

  [[nodiscard]] std::uint64_t revision() override;
  /// From the change log that every change of a key (set_status, replace, rotate,
  /// revoke_all, remove) appends to in its own transaction, one entry per key changed;
  /// the newest kChangeLogSize entries are kept.
  [[nodiscard]] std::optional<StoreChanges> changes_since(std::uint64_t since) override;
  /// The same for every SqliteStore of this process open on the same file (by its
  /// canonical path), so a revoke through one reaches validators over another at once.
  [[nodiscard]] const void* identity() const noexcept override;

  /// How many key changes the change log remembers (a revoke_all of n keys is n
  /// changes): a validator that polls less often than that many changes happen drops its
  /// whole cache instead.
  static constexpr std::uint64_t kChangeLogSize = 4096;

  /// The schema version this library writes (PRAGMA user_version).
  [[nodiscard]] static int schema_version() noexcept;

  /// The marker this library writes into the header of its databases (PRAGMA
  /// application_id): 0x6170696B, "apik" in ASCII at bytes 68-71 of the file.
  [[nodiscard]] static std::int32_t application_id() noexcept;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace apikeys

#endif  // APIKEYS_SQLITE_STORE_HPP
