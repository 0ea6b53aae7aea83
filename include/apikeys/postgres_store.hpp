// apikeys::PostgresStore keeps records in PostgreSQL, so that many processes on many
// machines share one set of keys; revision() lets their validators see each other's
// revokes. Built only with -DAPIKEYS_WITH_POSTGRES=ON (libpq); not in apikeys.hpp.
// Thread-safety: every method is safe from many threads (a small pool of connections).
// Ownership: owns its connections; libpq types never appear in this header.
#ifndef APIKEYS_POSTGRES_STORE_HPP
#define APIKEYS_POSTGRES_STORE_HPP

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "apikeys/export.hpp"
#include "apikeys/store.hpp"

namespace apikeys {

/// Options for PostgresStore. Every field states its default.
struct PostgresStoreOptions {
  /// Most connections open at once; a call that finds all of them busy waits up to
  /// `pool_wait` for one. Default 4.
  std::size_t pool_size = 4;
  /// Bound on opening one connection (TCP, TLS, authentication), enforced by the
  /// client. Default 5 s.
  std::chrono::milliseconds connect_timeout{5000};
  /// Bound on one round trip (send, server work, reply), enforced by the client; the
  /// server is also told (statement_timeout, lock_timeout) so it stops working on it.
  /// Default 5 s.
  std::chrono::milliseconds statement_timeout{5000};
  /// How long a call waits for a free pooled connection before Error(busy). Default 5 s.
  std::chrono::milliseconds pool_wait{5000};
  /// The schema holding the tables (created if missing). Letters, digits and
  /// underscores, not starting with a digit, at most 63 characters. Default "public".
  std::string schema = "public";
  /// Most audit events prune_audit() deletes in one statement (its own transaction): a
  /// prune of a long backlog stays within statement_timeout and holds its row locks one
  /// batch at a time. At least 1. Default 10,000.
  std::size_t audit_prune_batch = 10'000;
};

/// Tables (in `schema`): apikeys_keys (the records), apikeys_key_credits (one row per
/// lineage with credits), apikeys_meta (the revision counter), apikeys_changes (the
/// change log), apikeys_audit_events (the audit trail) and apikeys_schema_version (which
/// migrations ran). Writes are single statements,
/// each its own transaction: every change (set_status, remove, replace, rotate, revoke_all) bumps
/// the revision and logs the key in the same statement as the change, so whoever sees the new
/// revision sees the change. rotate() writes the old key and inserts its successor in one
/// statement: both or neither. list_page() pages by value (keyset) on an index of (account_id,
/// created_at DESC, key_id DESC). Credits: take_credits() is one guarded UPDATE on the
/// lineage's row; change_credits() is one transaction of a few statements.
///
/// Failures: a lost connection, a timeout, a server shutting down or starting, a lock
/// or serialization conflict are Error(busy) (try again); a duplicate is
/// Error(already_exists); anything else Error(storage). A dead pooled connection (the
/// server restarted) is detected and replaced; reads and idempotent writes are retried
/// once on a fresh connection; insert(), remove(), replace(), rotate(), revoke_all() and
/// replace_digests() are not (their effect may already have committed). Messages carry
/// the server's primary message, never its DETAIL (which can quote values), and never
/// quote the connection string: a failure to connect is reported as one of a few fixed
/// texts (authentication failed, server unreachable, timed out...), without libpq's own
/// words, which quote host, port, user, database and option values, and pieces of the
/// password when the string was mis-encoded.
class APIKEYS_EXPORT PostgresStore final : public Store {
 public:
  /// Connects with `conninfo` (a libpq key=value connection string or a
  /// postgresql:// URI, e.g. "host=127.0.0.1 port=5432 dbname=app user=app"), creates
  /// the schema and tables if missing and migrates them to the current version
  /// (concurrent openers are serialised by an advisory lock). Throws
  /// Error(invalid_argument) for a bad schema name or a malformed `conninfo` (checked
  /// before any I/O; the message says which, never where), Error(busy) if the server
  /// cannot be reached or refuses the connection (a wrong password included),
  /// Error(storage) if the tables were written by a newer version of this library or
  /// cannot be created. Keeps one copy of `conninfo` (it may hold a password) and wipes
  /// it when the store dies; the caller wipes its own.
  explicit PostgresStore(const std::string& conninfo, PostgresStoreOptions options = {});
  ~PostgresStore() override;

  void insert(const KeyRecord& record) override;
  [[nodiscard]] std::optional<KeyRecord> find(std::string_view public_key) override;
  [[nodiscard]] std::optional<KeyRecord> find_for_validation(std::string_view public_key) override;
  [[nodiscard]] std::vector<KeyInfo> list(const Uuid& account_id) override;
  std::optional<KeyInfo> set_status(const Uuid& account_id, const Uuid& key_id,
                                    KeyStatus status) override;
  std::optional<KeyInfo> remove(const Uuid& account_id, const Uuid& key_id) override;
  [[nodiscard]] std::optional<KeyInfo> get(const Uuid& account_id, const Uuid& key_id) override;
  [[nodiscard]] std::vector<KeyInfo> list_page(const Uuid& account_id,
                                               const std::optional<PagePosition>& after,
                                               std::size_t limit,
                                               std::optional<KeyStatus> status) override;
  WriteResult replace(const Uuid& account_id, const KeyInfo& next,
                      std::uint64_t expected_version) override;
  WriteResult rotate(const Uuid& account_id, const KeyInfo& old_next,
                     std::uint64_t expected_version, const KeyRecord& successor) override;
  /// One statement: every key revoked takes a revision and a change-log entry of its
  /// own, so revoking more than kChangeLogSize keys at once makes changes_since() answer
  /// nullopt for the revisions before it (validators then drop their whole cache).
  std::vector<KeyInfo> revoke_all(const Uuid& account_id, TimePoint at) override;
  void record_last_use(const std::vector<LastUse>& uses) override;
  /// One statement for the whole batch, not retried. Each change is matched against the
  /// digest its key had when the statement began, so a batch that names a key more than
  /// once rewrites it at most once (by the first change that matches). No revision step
  /// and no change-log entry: no verdict changes.
  std::size_t replace_digests(const std::vector<DigestChange>& changes) override;
  /// One GROUP BY over every key (a full scan: an operator's occasional question).
  [[nodiscard]] std::vector<PepperCount> pepper_counts() override;
  /// One prepared, guarded UPDATE of the lineage's credits row: the refill due and the
  /// take computed on the row as it is once locked, so concurrent callers in any process
  /// never take more than the balance. A take that takes nothing costs a second
  /// statement (it writes the refill due, and reads the balance). Not retried: a lost
  /// reply may hide a committed take.
  CreditTake take_credits(const Uuid& lineage_id, std::uint64_t min, std::uint64_t max,
                          TimePoint now) override;
  /// One UPDATE guarded by the period. Not retried.
  void return_credits(const Uuid& lineage_id, std::uint64_t n, std::int64_t period) override;
  void return_credits_checked(const Uuid& lineage_id, std::uint64_t n, std::int64_t period,
                              std::uint64_t generation) override;
  /// True: every balance has a generation (CreditTake::generation).
  [[nodiscard]] bool checks_credit_generations() const noexcept override { return true; }
  /// One transaction; creating or removing credits bumps the revision once per key of
  /// the lineage and logs each. Not retried.
  std::optional<KeyInfo> change_credits(const Uuid& account_id, const Uuid& key_id,
                                        const CreditsChange& change) override;
  /// True: the audit trail is kept in apikeys_audit_events.
  [[nodiscard]] bool keeps_audit() const noexcept override { return true; }
  /// Each `*_audited` write is one transaction, not retried: the write, each key's
  /// state before it (its row locked first, or returned by the DELETE), the events the
  /// ChangeAudit builds, and their rows. A throw (the ChangeAudit's included, rethrown as
  /// it was) rolls it all back.
  void insert_audited(const KeyRecord& record, const ChangeAudit& audit) override;
  WriteResult replace_audited(const Uuid& account_id, const KeyInfo& next,
                              std::uint64_t expected_version, const ChangeAudit& audit) override;
  WriteResult rotate_audited(const Uuid& account_id, const KeyInfo& old_next,
                             std::uint64_t expected_version, const KeyRecord& successor,
                             const ChangeAudit& audit) override;
  std::optional<KeyInfo> remove_audited(const Uuid& account_id, const Uuid& key_id,
                                        const ChangeAudit& audit) override;
  /// Locks the keys it revokes (in key_id order) before revoking them: one event per key
  /// revoked, however many processes revoke the account at once.
  std::vector<KeyInfo> revoke_all_audited(const Uuid& account_id, TimePoint at,
                                          const ChangeAudit& audit) override;
  std::optional<KeyInfo> change_credits_audited(const Uuid& account_id, const Uuid& key_id,
                                                const CreditsChange& change,
                                                const ChangeAudit& audit) override;
  /// One statement, as replace_digests() makes it, that also returns the keys it rewrote
  /// (with their credits, in batch order) for their events.
  std::size_t replace_digests_audited(const std::vector<DigestChange>& changes,
                                      const ChangeAudit& audit) override;
  /// take_credits()'s statements, told not to write a refill due, so that a take with
  /// no refill due costs what take_credits() costs. When one is due, one transaction
  /// locks the credits row, writes the refill (once per period, whichever process
  /// finds it due first) with the event of the lineage's newest key, and takes.
  CreditTake take_credits_audited(const Uuid& lineage_id, std::uint64_t min, std::uint64_t max,
                                  TimePoint now, const ChangeAudit& audit) override;
  /// One indexed range read; retried once after a lost connection.
  [[nodiscard]] std::vector<AuditEvent> audit_events(const Uuid& account_id,
                                                     const AuditRange& range) override;
  /// One DELETE, not retried.
  std::uint64_t prune_audit(TimePoint before) override;
  [[nodiscard]] std::uint64_t revision() override;
  /// From the change log that every change appends to in its own statement; the newest
  /// kChangeLogSize entries are kept.
  [[nodiscard]] std::optional<StoreChanges> changes_since(std::uint64_t since) override;

  /// How many changes (one per key changed) the change log remembers: a validator that polls
  /// less often than that many changes happen drops its whole cache instead.
  static constexpr std::uint64_t kChangeLogSize = 4096;

  /// The schema version this library writes (apikeys_schema_version.version).
  [[nodiscard]] static int schema_version() noexcept;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace apikeys

#endif  // APIKEYS_POSTGRES_STORE_HPP
