// Child process of the crash-safety test (crash_test.cpp). Creates keys in a SqliteStore
// as fast as it can and, only after create() has returned, reports each one on stdout as
// one line "public secret key_id account_id\n" written with a single write() (atomic on
// a pipe). Meanwhile a churn thread creates, revokes and deletes keys it never reports,
// and validations make the background writer update last_used_at, so a SIGKILL can land
// in any kind of transaction. An audit thread creates keys of account 3, updates each
// four times and revokes it, every call with a ChangeContext, so each change commits
// with its audit event; it reports nothing: the parent checks each key against its
// events. A refill thread takes credits of account 4's one key with
// take_credits_audited(), each take a day after the balance's refill period, so each
// writes a refill with its event ({"refilled_period":N} before and after); the parent
// checks that every refill committed with its event. The parent kills it at a random
// moment.
// Usage: apikeys_crash_child DB DURABLE(0|1)
#include <sys/prctl.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <chrono>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <optional>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "apikeys/apikeys.hpp"
#include "test_support.hpp"

namespace {

bool write_all(int fd, const std::string& s) {
  std::size_t done = 0;
  while (done < s.size()) {
    const ssize_t n = ::write(fd, s.data() + done, s.size() - done);
    if (n < 0) {
      if (errno == EINTR) continue;
      return false;
    }
    done += static_cast<std::size_t>(n);
  }
  return true;
}

// The refill thread's audit: one event per refill, its periods before and after.
class RefillAudit final : public apikeys::ChangeAudit {
 public:
  [[nodiscard]] std::optional<apikeys::AuditEvent> event(
      const apikeys::KeyInfo* before, const apikeys::KeyInfo* after) const override {
    if (before == nullptr || after == nullptr || !before->credits || !after->credits) {
      return std::nullopt;
    }
    apikeys::AuditEvent e;
    e.event_id = apikeys::Uuid::random();
    e.time = std::chrono::system_clock::now();
    e.action = apikeys::AuditAction::refill;
    e.context.actor = {apikeys::ActorType::system, "apikeys", "credit refill"};
    e.account_id = after->account_id;
    e.key_id = after->key_id;
    e.before = "{\"refilled_period\":" + std::to_string(before->credits->refilled_period) + "}";
    e.after = "{\"refilled_period\":" + std::to_string(after->credits->refilled_period) + "}";
    return e;
  }
};

// Upper bounds, so an orphan never runs for long even if the parent is gone.
constexpr int kMaxKeysPerThread = 20'000;
constexpr auto kMaxRunTime = std::chrono::seconds(60);

}  // namespace

int main(int argc, char** argv) {
  if (argc != 3) {
    std::fprintf(stderr, "usage: apikeys_crash_child DB DURABLE(0|1)\n");
    return 2;
  }
  ::prctl(PR_SET_PDEATHSIG, SIGKILL);
  try {
    apikeys::SqliteStoreOptions so;
    so.durable = argv[2][0] == '1';
    auto store = std::make_shared<apikeys::SqliteStore>(argv[1], so);
    auto hasher = std::make_shared<apikeys::HmacSha256Hasher>(apikeys_test::kTestPepper);
    apikeys::KeyManagerOptions mo;
    mo.validation.last_use_interval = std::chrono::milliseconds(1);
    mo.validation.flush_interval = std::chrono::milliseconds(2);
    apikeys::KeyManager manager(store, hasher, mo);

    const auto deadline = std::chrono::steady_clock::now() + kMaxRunTime;
    std::atomic<int> failed{0};
    std::vector<std::thread> threads;
    for (int t = 0; t < 2; ++t) {
      threads.emplace_back([&, t] {
        try {
          for (int i = 0; i < kMaxKeysPerThread && std::chrono::steady_clock::now() < deadline;
               ++i) {
            apikeys::CreateRequest req;
            req.title = "crash " + std::to_string(t) + " " + std::to_string(i);
            req.description = "written by the crash child \xe2\x9c\x93";
            if (i % 2 == 0) req.expires_in_days = 30;
            apikeys::CreatedKey c = manager.create(apikeys_test::account_id(1), req);
            const std::string line = c.info.public_key + " " + std::string(c.secret_key.reveal()) +
                                     " " + c.info.key_id.to_string() + " " +
                                     c.info.account_id.to_string() + "\n";
            if (!write_all(STDOUT_FILENO, line)) return;  // parent gone
            if (!manager.validate(c.info.public_key, c.secret_key.reveal()).ok()) {
              std::fprintf(stderr, "crash child: a key just created does not validate\n");
              ++failed;
              return;
            }
          }
        } catch (const std::exception& e) {
          std::fprintf(stderr, "crash child: %s\n", e.what());
          ++failed;
        }
      });
    }
    threads.emplace_back([&] {
      try {
        for (int i = 0; i < kMaxKeysPerThread && std::chrono::steady_clock::now() < deadline; ++i) {
          apikeys::CreatedKey c = manager.create(
              apikeys_test::account_id(2),
              apikeys::CreateRequest{"churn " + std::to_string(i), "", std::nullopt});
          manager.revoke(c.info.account_id, c.info.key_id);
          manager.remove(c.info.account_id, c.info.key_id);
        }
      } catch (const std::exception& e) {
        std::fprintf(stderr, "crash child: churn: %s\n", e.what());
        ++failed;
      }
    });
    threads.emplace_back([&] {
      try {
        apikeys::ChangeContext context;
        context.actor = {apikeys::ActorType::service, "crash-child", ""};
        context.reason = "crash test";
        const apikeys::Uuid account = apikeys_test::account_id(3);
        for (int i = 0; i < kMaxKeysPerThread && std::chrono::steady_clock::now() < deadline; ++i) {
          const std::string title = "audited " + std::to_string(i);
          apikeys::CreatedKey c =
              manager.create(account, apikeys::CreateRequest{title, "", std::nullopt}, context);
          for (int step = 1; step <= 4; ++step) {
            apikeys::KeyUpdate update;
            update.title = title + " step " + std::to_string(step);
            (void)manager.update(account, c.info.key_id, update, context);
          }
          (void)manager.revoke(account, c.info.key_id, context);
        }
      } catch (const std::exception& e) {
        std::fprintf(stderr, "crash child: audit: %s\n", e.what());
        ++failed;
      }
    });
    threads.emplace_back([&] {
      try {
        const apikeys::Uuid account = apikeys_test::account_id(4);
        std::vector<apikeys::KeyInfo> keys = store->list(account);
        if (keys.empty()) {
          apikeys::Credits credits;
          credits.remaining = 10;
          credits.refill = apikeys::CreditRefill{10, apikeys::RefillInterval::daily,
                                                 apikeys::RefillMode::reset, 0};
          (void)manager.create(
              account, apikeys::CreateRequest{"refilled", "", std::nullopt, "", {}, {}, credits});
          keys = store->list(account);
        }
        const apikeys::KeyInfo key = keys.at(0);
        const RefillAudit audit;
        for (int i = 0; i < kMaxKeysPerThread && std::chrono::steady_clock::now() < deadline; ++i) {
          const auto info = store->get(account, key.key_id);
          if (!info || !info->credits)
            throw std::runtime_error("the refilled key lost its credits");
          const apikeys::TimePoint next = apikeys::refill_period_start(
              apikeys::RefillInterval::daily, info->credits->refilled_period + 1);
          (void)store->take_credits_audited(key.lineage(), 1, 1, next, audit);
        }
      } catch (const std::exception& e) {
        std::fprintf(stderr, "crash child: refill: %s\n", e.what());
        ++failed;
      }
    });
    for (auto& t : threads) t.join();
    return failed.load() == 0 ? 0 : 1;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "crash child: %s\n", e.what());
    return 1;
  }
}
