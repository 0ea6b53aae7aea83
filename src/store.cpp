#include "apikeys/store.hpp"

#include <algorithm>

#include "apikeys/error.hpp"
#include "decoy_reads.hpp"

namespace apikeys {

// Out of line so the vtable and typeinfo live in the library and user subclasses link.
Store::~Store() = default;

// The defaults below give a store written before these operations existed what it can
// do with the operations it has; see doc/extending.md.

std::optional<KeyRecord> Store::find_for_validation(std::string_view public_key) {
  return find(public_key);
}

std::optional<KeyInfo> Store::get(const Uuid& account_id, const Uuid& key_id) {
  std::optional<KeyInfo> found;
  for (KeyInfo& info : list(account_id)) {
    if (info.key_id == key_id && info.account_id == account_id) {
      found = std::move(info);
      break;
    }
  }
  return found;
}

std::vector<KeyInfo> Store::list_page(const Uuid& account_id,
                                      const std::optional<PagePosition>& after, std::size_t limit,
                                      std::optional<KeyStatus> status) {
  std::vector<KeyInfo> keys = list(account_id);
  // Newest first, then the larger id first: the order every bundled store pages in.
  const auto newer = [](const KeyInfo& a, const KeyInfo& b) {
    if (a.created_at != b.created_at) return a.created_at > b.created_at;
    return b.key_id < a.key_id;
  };
  std::sort(keys.begin(), keys.end(), newer);
  std::vector<KeyInfo> page;
  for (KeyInfo& info : keys) {
    if (page.size() >= limit) break;
    if (info.account_id != account_id) continue;
    if (status && info.status != *status) continue;
    if (after) {
      // Strictly after the position in the order above.
      const bool past = info.created_at < after->created_at ||
                        (info.created_at == after->created_at && info.key_id < after->key_id);
      if (!past) continue;
    }
    page.push_back(std::move(info));
  }
  return page;
}

WriteResult Store::replace(const Uuid& /*account_id*/, const KeyInfo& /*next*/,
                           std::uint64_t /*expected_version*/) {
  throw Error(ErrorCode::not_supported, "this store cannot change a key's fields (replace)");
}

WriteResult Store::rotate(const Uuid& /*account_id*/, const KeyInfo& /*old_next*/,
                          std::uint64_t /*expected_version*/, const KeyRecord& /*successor*/) {
  throw Error(ErrorCode::not_supported, "this store cannot rotate keys (rotate)");
}

std::vector<KeyInfo> Store::revoke_all(const Uuid& account_id, TimePoint /*at*/) {
  std::vector<KeyInfo> revoked;
  for (const KeyInfo& info : list(account_id)) {
    if (info.status == KeyStatus::revoked || info.account_id != account_id) continue;
    if (auto now = set_status(account_id, info.key_id, KeyStatus::revoked)) {
      revoked.push_back(std::move(*now));
    }
  }
  return revoked;
}

namespace detail {
std::uint64_t& decoy_reads() noexcept {
  thread_local std::uint64_t reads = 0;
  return reads;
}
}  // namespace detail

std::size_t Store::replace_digests(const std::vector<DigestChange>& /*changes*/) {
  throw Error(ErrorCode::not_supported, "this store cannot rewrite digests (replace_digests)");
}

std::vector<PepperCount> Store::pepper_counts() {
  throw Error(ErrorCode::not_supported, "this store cannot count keys per pepper (pepper_counts)");
}

CreditTake Store::take_credits(const Uuid& /*lineage_id*/, std::uint64_t /*min*/,
                               std::uint64_t /*max*/, TimePoint /*now*/) {
  throw Error(ErrorCode::not_supported, "this store cannot keep credits (take_credits)");
}

void Store::return_credits(const Uuid& /*lineage_id*/, std::uint64_t /*n*/,
                           std::int64_t /*period*/) {
  throw Error(ErrorCode::not_supported, "this store cannot keep credits (return_credits)");
}

void Store::return_credits_checked(const Uuid& lineage_id, std::uint64_t n, std::int64_t period,
                                   std::uint64_t /*generation*/) {
  return_credits(lineage_id, n, period);
}

bool Store::checks_credit_generations() const noexcept { return false; }

std::optional<KeyInfo> Store::change_credits(const Uuid& /*account_id*/, const Uuid& /*key_id*/,
                                             const CreditsChange& /*change*/) {
  throw Error(ErrorCode::not_supported, "this store cannot keep credits (change_credits)");
}

ChangeAudit::~ChangeAudit() = default;

void Store::insert_audited(const KeyRecord& record, const ChangeAudit& /*audit*/) {
  insert(record);
}

WriteResult Store::replace_audited(const Uuid& account_id, const KeyInfo& next,
                                   std::uint64_t expected_version, const ChangeAudit& /*audit*/) {
  return replace(account_id, next, expected_version);
}

WriteResult Store::rotate_audited(const Uuid& account_id, const KeyInfo& old_next,
                                  std::uint64_t expected_version, const KeyRecord& successor,
                                  const ChangeAudit& /*audit*/) {
  return rotate(account_id, old_next, expected_version, successor);
}

std::optional<KeyInfo> Store::remove_audited(const Uuid& account_id, const Uuid& key_id,
                                             const ChangeAudit& /*audit*/) {
  return remove(account_id, key_id);
}

std::vector<KeyInfo> Store::revoke_all_audited(const Uuid& account_id, TimePoint at,
                                               const ChangeAudit& /*audit*/) {
  return revoke_all(account_id, at);
}

std::optional<KeyInfo> Store::change_credits_audited(const Uuid& account_id, const Uuid& key_id,
                                                     const CreditsChange& change,
                                                     const ChangeAudit& /*audit*/) {
  return change_credits(account_id, key_id, change);
}

std::size_t Store::replace_digests_audited(const std::vector<DigestChange>& changes,
                                           const ChangeAudit& /*audit*/) {
  return replace_digests(changes);
}

CreditTake Store::take_credits_audited(const Uuid& lineage_id, std::uint64_t min, std::uint64_t max,
                                       TimePoint now, const ChangeAudit& /*audit*/) {
  return take_credits(lineage_id, min, max, now);
}

std::vector<AuditEvent> Store::audit_events(const Uuid& /*account_id*/,
                                            const AuditRange& /*range*/) {
  throw Error(ErrorCode::not_supported, "this store keeps no audit trail (audit_events)");
}

std::uint64_t Store::prune_audit(TimePoint /*before*/) {
  throw Error(ErrorCode::not_supported, "this store keeps no audit trail (prune_audit)");
}

}  // namespace apikeys
