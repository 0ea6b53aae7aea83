// Private: the ChangeAudits of the library's own changes, which carry the system actor
// {system, "apikeys", detail} and no reason: a digest the Validator rewrote under the
// current pepper (rehash on use, Store::replace_digests_audited()) and a credit refill a
// take wrote (Store::take_credits_audited()). A store that keeps an audit trail writes
// their events with the change; each builder also keeps what it built, one event per
// key, for the observers (a store that retried its transaction built the first ones
// again). A store that keeps no audit trail calls neither (the Store defaults), so its
// system changes reach no observer: replace_digests() and take_credits() do not say
// which keys they rewrote or refilled, and an event is not guessed.
// Thread-safety: like every ChangeAudit, used by the one store call it is passed to, on
// that call's thread; take() once that call has returned.
// Ownership: each owns the events it built; RehashAudit borrows its clock and batch.
#ifndef APIKEYS_SRC_SYSTEM_AUDIT_HPP
#define APIKEYS_SRC_SYSTEM_AUDIT_HPP

#include <cstddef>
#include <optional>
#include <utility>
#include <vector>

#include "apikeys/clock.hpp"
#include "apikeys/observer.hpp"
#include "apikeys/store.hpp"
#include "apikeys/types.hpp"

namespace apikeys::detail {

// The actor id of every system event.
inline constexpr const char* kSystemActorId = "apikeys";

// The events of one batch of digest rewrites: for each key the store rewrote, `rehash`
// with before {"pepper_id":OLD} and after {"pepper_id":NEW}, from the batch's change for
// that key (a pepper id is not a secret; a digest never appears). At the clock's time.
class RehashAudit final : public ChangeAudit {
 public:
  RehashAudit(const Clock& clock, const std::vector<DigestChange>& batch) noexcept
      : clock_(clock), batch_(batch) {}

  // nullopt for a key the batch does not change.
  std::optional<AuditEvent> event(const KeyInfo* before, const KeyInfo* after) const override;

  // The events built since the last take(), in the order built.
  [[nodiscard]] std::vector<AuditEvent> take() const noexcept { return std::exchange(built_, {}); }

 private:
  // The batch's change of `key_id`, or nullptr.
  const DigestChange* change_of(const Uuid& key_id) const;

  const Clock& clock_;
  const std::vector<DigestChange>& batch_;
  // batch_'s indices ordered by key id, made at the first event (never, when the store
  // calls none).
  mutable std::vector<std::size_t> by_key_;
  mutable std::vector<AuditEvent> built_;
};

// The event of a refill a credit take wrote: `refill`, with before and after the
// `credits` field of the keys the store passes (stored, then refilled; no refill applied
// here). At `at`, the time the take was asked for. Allocates nothing until it builds an
// event: the Validator puts one on the stack of every admission with credits.
class RefillAudit final : public ChangeAudit {
 public:
  explicit RefillAudit(TimePoint at) noexcept : at_(at) {}

  // nullopt unless both states are given.
  std::optional<AuditEvent> event(const KeyInfo* before, const KeyInfo* after) const override;

  // Marks the events built so far as written: the take they were built for returned, so
  // its transaction committed. The events of a take that threw (rolled back with its
  // refill) are never taken. Called by whoever made the take (mark_committed()).
  void committed() const noexcept { committed_ = built_.size(); }

  // True when no committed event waits: nothing to publish.
  [[nodiscard]] bool empty() const noexcept { return committed_ == 0; }
  // The committed events since the last take(), in the order built; drops the others.
  [[nodiscard]] std::vector<AuditEvent> take() const noexcept {
    std::vector<AuditEvent> out = std::exchange(built_, {});
    out.erase(out.begin() + static_cast<std::ptrdiff_t>(committed_), out.end());
    committed_ = 0;
    return out;
  }

 private:
  const TimePoint at_;
  mutable std::vector<AuditEvent> built_;
  mutable std::size_t committed_ = 0;  // built_[0, committed_) were written
};

// After a take through Store::take_credits_audited(..., *audit) returned: if `audit` is
// the library's RefillAudit, its events were written (RefillAudit::committed()).
inline void mark_committed(const ChangeAudit* audit) noexcept {
  if (const auto* refills = dynamic_cast<const RefillAudit*>(audit)) refills->committed();
}

}  // namespace apikeys::detail

#endif  // APIKEYS_SRC_SYSTEM_AUDIT_HPP
