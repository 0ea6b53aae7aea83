// apikeys::MemoryStore keeps records in process memory: for tests, examples and
// small embedded uses. Nothing survives the process.
// Thread-safety: every method is safe from many threads (a reader-writer lock).
// Ownership: owns copies of every record.
#ifndef APIKEYS_MEMORY_STORE_HPP
#define APIKEYS_MEMORY_STORE_HPP

#include <cstddef>
#include <cstdint>
#include <memory>
#include <optional>
#include <vector>

#include "apikeys/export.hpp"
#include "apikeys/store.hpp"

namespace apikeys {

/// How much a MemoryStore may hold. Thread-safety and ownership: a plain value.
struct MemoryStoreOptions {
  /// insert() (and rotate()'s successor) throw Error(storage) beyond this many keys.
  /// Default: 10,000,000.
  std::size_t max_keys = 10'000'000;
  /// The audit trail keeps at most this many events, of all accounts together. Beyond
  /// it, each new event drops the oldest one (the smallest time, then event_id): a
  /// change is never refused for the audit trail's sake (a revoke must not fail because
  /// the trail is full), and a store that forgets everything at exit keeps the newest
  /// history instead. 0 keeps none. Default: 100,000.
  std::size_t max_audit_events = 100'000;
};

/// A Store in process memory, bounded in keys and in audit events. revision() stays 0:
/// nothing outside this process can change it. It keeps an audit trail (keeps_audit()):
/// each `*_audited` write builds its events before it changes anything, under the
/// store's lock, so an audit that throws leaves the store as it was. The ChangeAudit
/// runs under that lock: it must not call the store.
class APIKEYS_EXPORT MemoryStore final : public Store {
 public:
  /// `max_keys` bounds memory: insert() throws Error(storage) beyond it.
  /// Default: 10,000,000 keys, and the default MemoryStoreOptions otherwise.
  explicit MemoryStore(std::size_t max_keys = 10'000'000);
  /// A store bounded as `options` says.
  explicit MemoryStore(const MemoryStoreOptions& options);
  ~MemoryStore() override;

  void insert(const KeyRecord& record) override;
  [[nodiscard]] std::optional<KeyRecord> find(std::string_view public_key) override;
  [[nodiscard]] std::optional<KeyRecord> find_for_validation(std::string_view public_key) override;
  [[nodiscard]] std::vector<KeyInfo> list(const Uuid& account_id) override;
  /// Adds 1 to the key's version when the status changes.
  std::optional<KeyInfo> set_status(const Uuid& account_id, const Uuid& key_id,
                                    KeyStatus status) override;
  std::optional<KeyInfo> remove(const Uuid& account_id, const Uuid& key_id) override;
  void record_last_use(const std::vector<LastUse>& uses) override;

  // The operations below are atomic under the store's lock: another thread sees a
  // change wholly or not at all.
  [[nodiscard]] std::optional<KeyInfo> get(const Uuid& account_id, const Uuid& key_id) override;
  /// Walks only the account's own index, from the position on.
  [[nodiscard]] std::vector<KeyInfo> list_page(const Uuid& account_id,
                                               const std::optional<PagePosition>& after,
                                               std::size_t limit,
                                               std::optional<KeyStatus> status) override;
  WriteResult replace(const Uuid& account_id, const KeyInfo& next,
                      std::uint64_t expected_version) override;
  /// The successor counts against max_keys: when the store is full, throws
  /// Error(storage) and changes neither key.
  WriteResult rotate(const Uuid& account_id, const KeyInfo& old_next,
                     std::uint64_t expected_version, const KeyRecord& successor) override;
  std::vector<KeyInfo> revoke_all(const Uuid& account_id, TimePoint at) override;
  /// The whole batch under one lock.
  std::size_t replace_digests(const std::vector<DigestChange>& changes) override;
  /// Counts every key under the reader lock: O(keys).
  [[nodiscard]] std::vector<PepperCount> pepper_counts() override;
  CreditTake take_credits(const Uuid& lineage_id, std::uint64_t min, std::uint64_t max,
                          TimePoint now) override;
  void return_credits(const Uuid& lineage_id, std::uint64_t n, std::int64_t period) override;
  void return_credits_checked(const Uuid& lineage_id, std::uint64_t n, std::int64_t period,
                              std::uint64_t generation) override;
  /// True: every balance has a generation (CreditTake::generation).
  [[nodiscard]] bool checks_credit_generations() const noexcept override { return true; }
  std::optional<KeyInfo> change_credits(const Uuid& account_id, const Uuid& key_id,
                                        const CreditsChange& change) override;

  /// True: see the class comment.
  [[nodiscard]] bool keeps_audit() const noexcept override { return true; }
  /// A duplicate key is refused (already_exists) before `audit` is called.
  void insert_audited(const KeyRecord& record, const ChangeAudit& audit) override;
  WriteResult replace_audited(const Uuid& account_id, const KeyInfo& next,
                              std::uint64_t expected_version, const ChangeAudit& audit) override;
  /// A duplicate or a full store is refused before `audit` is called.
  WriteResult rotate_audited(const Uuid& account_id, const KeyInfo& old_next,
                             std::uint64_t expected_version, const KeyRecord& successor,
                             const ChangeAudit& audit) override;
  std::optional<KeyInfo> remove_audited(const Uuid& account_id, const Uuid& key_id,
                                        const ChangeAudit& audit) override;
  std::vector<KeyInfo> revoke_all_audited(const Uuid& account_id, TimePoint at,
                                          const ChangeAudit& audit) override;
  std::optional<KeyInfo> change_credits_audited(const Uuid& account_id, const Uuid& key_id,
                                                const CreditsChange& change,
                                                const ChangeAudit& audit) override;
  /// The whole batch under one lock: an event that throws leaves every digest as it was.
  std::size_t replace_digests_audited(const std::vector<DigestChange>& changes,
                                      const ChangeAudit& audit) override;
  /// Finding the lineage's newest key for a refill's event walks the keys of its
  /// account, once per refill period; a take with no refill due costs what
  /// take_credits() costs.
  CreditTake take_credits_audited(const Uuid& lineage_id, std::uint64_t min, std::uint64_t max,
                                  TimePoint now, const ChangeAudit& audit) override;
  /// Walks the account's events from the position on: O(log events + events read),
  /// and with range.key_id the account's other events in between too. Event times are
  /// kept to the millisecond, like every bundled store's.
  [[nodiscard]] std::vector<AuditEvent> audit_events(const Uuid& account_id,
                                                     const AuditRange& range) override;
  std::uint64_t prune_audit(TimePoint before) override;

  /// Number of keys held.
  [[nodiscard]] std::size_t size() const;
  /// Number of audit events held, of every account.
  [[nodiscard]] std::size_t audit_size() const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace apikeys

#endif  // APIKEYS_MEMORY_STORE_HPP
