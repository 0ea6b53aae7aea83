// Store doubles for validator tests: a wrapper that counts and can pause or fail
// calls, forwarding everything else to a MemoryStore; one that forwards to any Store
// and watches (and can hold) its last-use writes; one that adds digest rewrites
// (replace_digests, pepper_counts) to a store without them; and a cache that counts
// its calls.
// Thread-safety: as safe as the store they forward to; the gates are a mutex + condition.
// Ownership: InstrumentedStore and CountingCache own their inner MemoryStore and
// MemoryCache; LastUseWatch and DigestStore share their store.
#ifndef APIKEYS_TESTS_STORE_DOUBLES_HPP
#define APIKEYS_TESTS_STORE_DOUBLES_HPP

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <stdexcept>
#include <string>
#include <string_view>
#include <thread>
#include <utility>
#include <vector>

#include "apikeys/cache.hpp"
#include "apikeys/memory_cache.hpp"
#include "apikeys/memory_store.hpp"

namespace apikeys_test {

class InstrumentedStore final : public apikeys::Store {
 public:
  apikeys::MemoryStore inner;
  std::atomic<int> finds{0};
  std::atomic<int> last_use_batches{0};
  std::atomic<int> last_use_entries{0};
  std::atomic<std::thread::id> last_use_thread{};  // the thread of the latest batch
  std::atomic<bool> fail_finds{false};
  std::atomic<bool> fail_with_non_std{false};
  std::atomic<bool> fail_last_use{false};
  std::atomic<std::uint64_t> rev{0};

  // Pause gate: when armed, the next find() signals `paused` and waits for release().
  void arm_pause() {
    std::lock_guard<std::mutex> l(mu_);
    armed_ = true;
    paused_ = false;
    released_ = false;
  }
  void wait_until_paused() {
    std::unique_lock<std::mutex> l(mu_);
    cv_.wait(l, [this] { return paused_; });
  }
  void release() {
    std::lock_guard<std::mutex> l(mu_);
    released_ = true;
    cv_.notify_all();
  }

  void insert(const apikeys::KeyRecord& r) override { inner.insert(r); }
  std::optional<apikeys::KeyRecord> find(std::string_view pk) override {
    ++finds;
    if (fail_with_non_std) throw 42;  // a user's backend may throw anything
    if (fail_finds) throw std::runtime_error("disk on fire");
    auto r = inner.find(pk);
    std::unique_lock<std::mutex> l(mu_);
    if (armed_) {
      armed_ = false;
      paused_ = true;
      cv_.notify_all();
      cv_.wait(l, [this] { return released_; });
    }
    return r;
  }
  std::vector<apikeys::KeyInfo> list(const apikeys::Uuid& a) override { return inner.list(a); }
  std::optional<apikeys::KeyInfo> set_status(const apikeys::Uuid& a, const apikeys::Uuid& k,
                                             apikeys::KeyStatus s) override {
    return inner.set_status(a, k, s);
  }
  std::optional<apikeys::KeyInfo> remove(const apikeys::Uuid& a, const apikeys::Uuid& k) override {
    return inner.remove(a, k);
  }
  void record_last_use(const std::vector<apikeys::LastUse>& uses) override {
    if (fail_last_use) throw std::runtime_error("write failed");
    last_use_thread = std::this_thread::get_id();
    ++last_use_batches;
    last_use_entries += static_cast<int>(uses.size());
    inner.record_last_use(uses);
  }
  std::uint64_t revision() override { return rev.load(); }

  // A change made "by another process": the store changes and the revision moves, but
  // no KeyManager of this process hears of it. With keep_log, changes_since() names it.
  std::atomic<bool> keep_log{false};
  void external_revoke(const apikeys::Uuid& account, const apikeys::Uuid& key) {
    auto info = inner.set_status(account, key, apikeys::KeyStatus::revoked);
    std::lock_guard<std::mutex> l(mu_);
    if (info) log_.push_back(info->public_key);
    rev = log_.size();
  }
  std::optional<apikeys::StoreChanges> changes_since(std::uint64_t since) override {
    std::lock_guard<std::mutex> l(mu_);
    if (!keep_log || since > log_.size()) return std::nullopt;
    apikeys::StoreChanges out;
    out.revision = log_.size();
    out.public_keys.assign(log_.begin() + static_cast<std::ptrdiff_t>(since), log_.end());
    return out;
  }

 private:
  std::mutex mu_;
  std::condition_variable cv_;
  bool armed_ = false;
  bool paused_ = false;
  bool released_ = false;
  std::vector<std::string> log_;  // guarded by mu_: the public key of each revision step
};

// A MemoryCache that counts every call made to it (reset() before the calls a test
// watches: a Validator clears its cache once when it is built).
class CountingCache final : public apikeys::Cache {
 public:
  apikeys::MemoryCache inner;
  std::atomic<int> gets{0};
  std::atomic<int> fill_tokens{0};
  std::atomic<int> puts{0};
  std::atomic<int> erases{0};
  std::atomic<int> clears{0};

  int calls() const { return gets + fill_tokens + puts + erases + clears; }
  void reset() { gets = fill_tokens = puts = erases = clears = 0; }

  std::optional<apikeys::Verdict> get(std::string_view pk, const apikeys::Digest& d) override {
    ++gets;
    return inner.get(pk, d);
  }
  std::uint64_t fill_token(std::string_view pk) override {
    ++fill_tokens;
    return inner.fill_token(pk);
  }
  void put(std::string_view pk, const apikeys::Digest& d, const apikeys::Verdict& v,
           std::chrono::milliseconds ttl, std::uint64_t token) override {
    ++puts;
    inner.put(pk, d, v, ttl, token);
  }
  void erase(std::string_view pk) override {
    ++erases;
    inner.erase(pk);
  }
  void clear() override {
    ++clears;
    inner.clear();
  }
};

// Forwards the seven core Store calls to another store; a double derives from it and
// overrides what it watches. identity() and changes_since() keep the Store defaults (an
// identity of its own, no change log) unless the double forwards them too: a wrapper
// with its own identity is, for the in-process revocation registry, another store.
class ForwardingStore : public apikeys::Store {
 public:
  explicit ForwardingStore(std::shared_ptr<apikeys::Store> inner) : inner_(std::move(inner)) {}

  void insert(const apikeys::KeyRecord& r) override { inner_->insert(r); }
  std::optional<apikeys::KeyRecord> find(std::string_view pk) override { return inner_->find(pk); }
  std::vector<apikeys::KeyInfo> list(const apikeys::Uuid& a) override { return inner_->list(a); }
  std::optional<apikeys::KeyInfo> set_status(const apikeys::Uuid& a, const apikeys::Uuid& k,
                                             apikeys::KeyStatus s) override {
    return inner_->set_status(a, k, s);
  }
  std::optional<apikeys::KeyInfo> remove(const apikeys::Uuid& a, const apikeys::Uuid& k) override {
    return inner_->remove(a, k);
  }
  void record_last_use(const std::vector<apikeys::LastUse>& uses) override {
    inner_->record_last_use(uses);
  }
  std::uint64_t revision() override { return inner_->revision(); }
  std::optional<apikeys::KeyInfo> get(const apikeys::Uuid& a, const apikeys::Uuid& k) override {
    return inner_->get(a, k);
  }
  std::vector<apikeys::KeyInfo> list_page(const apikeys::Uuid& a,
                                          const std::optional<apikeys::PagePosition>& after,
                                          std::size_t limit,
                                          std::optional<apikeys::KeyStatus> status) override {
    return inner_->list_page(a, after, limit, status);
  }
  apikeys::WriteResult replace(const apikeys::Uuid& a, const apikeys::KeyInfo& next,
                               std::uint64_t expected_version) override {
    return inner_->replace(a, next, expected_version);
  }
  apikeys::WriteResult rotate(const apikeys::Uuid& a, const apikeys::KeyInfo& old_next,
                              std::uint64_t expected_version,
                              const apikeys::KeyRecord& successor) override {
    return inner_->rotate(a, old_next, expected_version, successor);
  }
  std::vector<apikeys::KeyInfo> revoke_all(const apikeys::Uuid& a, apikeys::TimePoint at) override {
    return inner_->revoke_all(a, at);
  }

 protected:
  apikeys::Store& inner() { return *inner_; }

 private:
  std::shared_ptr<apikeys::Store> inner_;
};

// Counts find() calls (a cache hit makes none) and forwards the change log too.
class CountingStore final : public ForwardingStore {
 public:
  using ForwardingStore::ForwardingStore;
  std::atomic<int> finds{0};

  std::optional<apikeys::KeyRecord> find(std::string_view pk) override {
    ++finds;
    return ForwardingStore::find(pk);
  }
  std::optional<apikeys::StoreChanges> changes_since(std::uint64_t since) override {
    return inner().changes_since(since);
  }
};

// Forwards every call to another Store and watches record_last_use(): counts the calls
// begun and finished (returned or thrown), and while hold_last_use() is in force keeps
// new calls waiting before they reach the inner store, until release_last_use().
// Over a real store it shows when a last-use write has started (and so is stuck on a
// lock the test holds) and whether it is still stuck.
class LastUseWatch final : public ForwardingStore {
 public:
  using ForwardingStore::ForwardingStore;

  std::atomic<int> last_use_begun{0};
  std::atomic<int> last_use_finished{0};

  void hold_last_use() {
    std::lock_guard<std::mutex> l(mu_);
    held_ = true;
  }
  void release_last_use() {
    std::lock_guard<std::mutex> l(mu_);
    held_ = false;
    cv_.notify_all();
  }
  // Waits up to `limit` until more than `n` calls have begun; returns whether they have.
  bool wait_begun_beyond(int n, std::chrono::milliseconds limit) {
    std::unique_lock<std::mutex> l(mu_);
    return cv_.wait_for(l, limit, [&] { return last_use_begun.load() > n; });
  }

  void record_last_use(const std::vector<apikeys::LastUse>& uses) override {
    struct Finished {
      std::atomic<int>& n;
      ~Finished() { ++n; }
    } finished{last_use_finished};
    {
      std::unique_lock<std::mutex> l(mu_);
      ++last_use_begun;
      cv_.notify_all();
      cv_.wait(l, [this] { return !held_; });
    }
    ForwardingStore::record_last_use(uses);
  }

 private:
  std::mutex mu_;
  std::condition_variable cv_;
  bool held_ = false;
};

// Adds replace_digests() and pepper_counts() to a store that lacks them (a MemoryStore
// before it had them): a rewritten digest is kept here, over the inner store's, and
// find() answers with it. Counts find() calls and the digest batches and changes it
// was given; with `apply` false it takes batches and rewrites nothing (as if every
// key's digest had changed meanwhile); with `fail_digests` it throws instead. While
// hold_digests() is in force, replace_digests() waits before it does anything.
class DigestStore final : public ForwardingStore {
 public:
  explicit DigestStore(
      std::shared_ptr<apikeys::Store> inner = std::make_shared<apikeys::MemoryStore>())
      : ForwardingStore(std::move(inner)) {}

  std::atomic<int> finds{0};
  std::atomic<int> digest_batches{0};
  std::atomic<int> digest_changes{0};
  std::atomic<bool> apply{true};
  std::atomic<bool> fail_digests{false};

  void hold_digests() {
    std::lock_guard<std::mutex> l(gate_mu_);
    held_ = true;
  }
  void release_digests() {
    std::lock_guard<std::mutex> l(gate_mu_);
    held_ = false;
    gate_cv_.notify_all();
  }
  // Waits up to `limit` until a replace_digests() call is waiting at the gate.
  bool wait_digests_held(std::chrono::milliseconds limit) {
    std::unique_lock<std::mutex> l(gate_mu_);
    return gate_cv_.wait_for(l, limit, [&] { return waiting_ > 0; });
  }

  void insert(const apikeys::KeyRecord& r) override {
    ForwardingStore::insert(r);
    std::lock_guard<std::mutex> l(mu_);
    public_keys_[r.info.key_id] = r.info.public_key;
    digests_.erase(r.info.key_id);
  }
  std::optional<apikeys::KeyRecord> find(std::string_view pk) override {
    ++finds;
    auto r = ForwardingStore::find(pk);
    std::lock_guard<std::mutex> l(mu_);
    if (r) {
      const auto it = digests_.find(r->info.key_id);
      if (it != digests_.end()) r->digest = it->second;
    }
    return r;
  }
  std::size_t replace_digests(const std::vector<apikeys::DigestChange>& changes) override {
    {
      std::unique_lock<std::mutex> l(gate_mu_);
      ++waiting_;
      gate_cv_.notify_all();
      gate_cv_.wait(l, [this] { return !held_; });
      --waiting_;
    }
    ++digest_batches;
    digest_changes += static_cast<int>(changes.size());
    if (fail_digests) throw std::runtime_error("digest write failed");
    if (!apply) return 0;
    std::size_t n = 0;
    for (const apikeys::DigestChange& c : changes) {
      std::string pk;
      {
        std::lock_guard<std::mutex> l(mu_);
        const auto it = public_keys_.find(c.key_id);
        if (it == public_keys_.end()) continue;
        pk = it->second;
      }
      // Compare and set under mu_, so that no other rewrite of the key runs between.
      std::lock_guard<std::mutex> l(mu_);
      auto r = ForwardingStore::find(pk);
      if (!r) continue;
      const auto it = digests_.find(c.key_id);
      const apikeys::Digest now = it != digests_.end() ? it->second : r->digest;
      if (now.bytes != c.from.bytes || now.pepper_id != c.from.pepper_id) continue;
      digests_[c.key_id] = c.to;
      ++n;
    }
    return n;
  }
  std::vector<apikeys::PepperCount> pepper_counts() override {
    std::vector<std::string> keys;
    {
      std::lock_guard<std::mutex> l(mu_);
      for (const auto& entry : public_keys_) keys.push_back(entry.second);
    }
    std::map<std::uint32_t, std::uint64_t> counts;
    for (const std::string& pk : keys) {
      if (auto r = find(pk)) ++counts[r->digest.pepper_id];
    }
    std::vector<apikeys::PepperCount> out;
    for (const auto& [id, n] : counts) out.push_back(apikeys::PepperCount{id, n});
    return out;
  }

 private:
  std::mutex mu_;
  std::map<apikeys::Uuid, std::string> public_keys_;  // guarded by mu_: key id -> public key
  std::map<apikeys::Uuid, apikeys::Digest> digests_;  // guarded by mu_: rewritten digests
  std::mutex gate_mu_;
  std::condition_variable gate_cv_;
  bool held_ = false;  // guarded by gate_mu_
  int waiting_ = 0;    // guarded by gate_mu_
};

}  // namespace apikeys_test

#endif  // APIKEYS_TESTS_STORE_DOUBLES_HPP
