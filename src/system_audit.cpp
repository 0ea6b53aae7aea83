// The system actor's audit events: see system_audit.hpp.
#include "system_audit.hpp"

#include <algorithm>
#include <numeric>

#include "audit_json.hpp"

namespace apikeys::detail {

namespace {

// {system, "apikeys", detail}, no reason.
ChangeContext system_context(const char* detail) {
  ChangeContext context;
  context.actor.type = ActorType::system;
  context.actor.id = kSystemActorId;
  context.actor.detail = detail;
  return context;
}

// One event per key: a store that retried its transaction replaces the first attempt's.
void keep(std::vector<AuditEvent>& built, const AuditEvent& e) {
  built.erase(std::remove_if(built.begin(), built.end(),
                             [&](const AuditEvent& b) { return b.key_id == e.key_id; }),
              built.end());
  built.push_back(e);
}

// Milliseconds, as stores keep times.
TimePoint stored_time(TimePoint t) { return from_unix_millis(to_unix_millis(t)); }

}  // namespace

const DigestChange* RehashAudit::change_of(const Uuid& key_id) const {
  if (by_key_.size() != batch_.size()) {
    by_key_.resize(batch_.size());
    std::iota(by_key_.begin(), by_key_.end(), std::size_t{0});
    std::sort(by_key_.begin(), by_key_.end(),
              [&](std::size_t a, std::size_t b) { return batch_[a].key_id < batch_[b].key_id; });
  }
  const auto it =
      std::lower_bound(by_key_.begin(), by_key_.end(), key_id,
                       [&](std::size_t i, const Uuid& id) { return batch_[i].key_id < id; });
  if (it == by_key_.end() || !(batch_[*it].key_id == key_id)) return nullptr;
  return &batch_[*it];
}

std::optional<AuditEvent> RehashAudit::event(const KeyInfo* before, const KeyInfo* after) const {
  const KeyInfo* key = after != nullptr ? after : before;
  if (key == nullptr) return std::nullopt;
  const DigestChange* change = change_of(key->key_id);
  if (change == nullptr) return std::nullopt;
  AuditEvent e;
  e.time = stored_time(clock_.now());
  e.event_id = audit_event_id(e.time);
  e.action = AuditAction::rehash;
  e.context = system_context("rehash on use");
  e.account_id = key->account_id;
  e.key_id = key->key_id;
  e.before = count_json("pepper_id", change->from.pepper_id);
  e.after = count_json("pepper_id", change->to.pepper_id);
  keep(built_, e);
  return e;
}

std::optional<AuditEvent> RefillAudit::event(const KeyInfo* before, const KeyInfo* after) const {
  if (before == nullptr || after == nullptr) return std::nullopt;
  AuditEvent e;
  e.time = stored_time(at_);
  e.event_id = audit_event_id(e.time);
  e.action = AuditAction::refill;
  e.context = system_context("credit refill");
  e.account_id = after->account_id;
  e.key_id = after->key_id;
  e.before = key_json(*before, key_field::kCredits);
  e.after = key_json(*after, key_field::kCredits);
  // One event per key among those not yet committed: a store that retried its
  // transaction replaces the first attempt's.
  built_.erase(std::remove_if(built_.begin() + static_cast<std::ptrdiff_t>(committed_),
                              built_.end(),
                              [&](const AuditEvent& b) { return b.key_id == e.key_id; }),
               built_.end());
  built_.push_back(e);
  return e;
}

}  // namespace apikeys::detail
