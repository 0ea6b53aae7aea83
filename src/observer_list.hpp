// Private: the observers a component reports to (observer.hpp), each call guarded so
// that an observer's exception is caught, counted and reported to the others, and never
// reaches the component's caller.
// Thread-safety: the list is fixed at construction; every method is safe from many
// threads at once.
// Ownership: shares ownership of the observers.
#ifndef APIKEYS_SRC_OBSERVER_LIST_HPP
#define APIKEYS_SRC_OBSERVER_LIST_HPP

#include <atomic>
#include <cstdint>
#include <memory>
#include <string_view>
#include <vector>

#include "apikeys/observer.hpp"

namespace apikeys::detail {

class ObserverList {
 public:
  ObserverList() = default;
  // Throws Error(invalid_argument) for a null observer.
  explicit ObserverList(std::vector<std::shared_ptr<Observer>> observers);

  // True when nobody observes: callers skip building events (and reading clocks).
  [[nodiscard]] bool empty() const noexcept { return observers_.empty(); }

  void validate(const ValidateEvent& event) const noexcept;
  void change(const AuditEvent& event) const noexcept;
  void error(const BackgroundError& error) const noexcept;
  // The same, built here: nothing at all when nobody observes.
  void error(Component component, std::string_view operation, std::string_view message,
             bool recovered = false) const noexcept;
  void write(const BackgroundWrite& write) const noexcept;

  // Exceptions observers threw since construction.
  [[nodiscard]] std::uint64_t failures() const noexcept {
    return failures_.load(std::memory_order_relaxed);
  }

 private:
  template <class Call>
  void each(const Call& call) const noexcept;
  // Observer `failed` threw: count it and tell the others (whose own exceptions are
  // counted, never reported further).
  void failed(const Observer* failed) const noexcept;

  std::vector<std::shared_ptr<Observer>> observers_;
  mutable std::atomic<std::uint64_t> failures_{0};
};

}  // namespace apikeys::detail

#endif  // APIKEYS_SRC_OBSERVER_LIST_HPP
