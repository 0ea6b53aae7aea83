// Names of the observer enums (observer.hpp), and the Observer's out-of-line destructor.
#include "apikeys/observer.hpp"

#include <utility>

#include "apikeys/error.hpp"
#include "observer_list.hpp"

namespace apikeys {

Observer::~Observer() = default;

const char* to_string(ValidatePath path) noexcept {
  switch (path) {
    case ValidatePath::format: return "format";
    case ValidatePath::cache: return "cache";
    case ValidatePath::store: return "store";
  }
  return "store";
}

const char* to_string(CacheResult result) noexcept {
  switch (result) {
    case CacheResult::none: return "none";
    case CacheResult::hit: return "hit";
    case CacheResult::miss: return "miss";
    case CacheResult::error: return "error";
  }
  return "error";
}

const char* to_string(AdmissionResult result) noexcept {
  switch (result) {
    case AdmissionResult::none: return "none";
    case AdmissionResult::admitted: return "admitted";
    case AdmissionResult::rate_limited: return "rate_limited";
    case AdmissionResult::usage_exceeded: return "usage_exceeded";
    case AdmissionResult::failed: return "failed";
  }
  return "failed";
}

const char* to_string(ActorType type) noexcept {
  switch (type) {
    case ActorType::user: return "user";
    case ActorType::service: return "service";
    case ActorType::system: return "system";
  }
  return "system";
}

const char* to_string(AuditAction action) noexcept {
  switch (action) {
    case AuditAction::create: return "create";
    case AuditAction::update: return "update";
    case AuditAction::disable: return "disable";
    case AuditAction::enable: return "enable";
    case AuditAction::rotate: return "rotate";
    case AuditAction::revoke: return "revoke";
    case AuditAction::revoke_all: return "revoke_all";
    case AuditAction::remove: return "remove";
    case AuditAction::set_credits: return "set_credits";
    case AuditAction::add_credits: return "add_credits";
    case AuditAction::import: return "import";
    case AuditAction::rehash: return "rehash";
    case AuditAction::refill: return "refill";
  }
  return "update";
}

const char* to_string(Component component) noexcept {
  switch (component) {
    case Component::cache: return "cache";
    case Component::store: return "store";
    case Component::revision_poll: return "revision_poll";
    case Component::last_use: return "last_use";
    case Component::rehash: return "rehash";
    case Component::limiter: return "limiter";
    case Component::redis: return "redis";
    case Component::observer: return "observer";
  }
  return "store";
}

namespace detail {

ObserverList::ObserverList(std::vector<std::shared_ptr<Observer>> observers)
    : observers_(std::move(observers)) {
  for (const auto& o : observers_) {
    if (!o) throw Error(ErrorCode::invalid_argument, "an observer is null");
  }
}

template <class Call>
void ObserverList::each(const Call& call) const noexcept {
  for (const auto& o : observers_) {
    try {
      call(*o);
    } catch (...) {
      failed(o.get());
    }
  }
}

void ObserverList::failed(const Observer* failed) const noexcept {
  failures_.fetch_add(1, std::memory_order_relaxed);
  BackgroundError e;
  e.component = Component::observer;
  e.operation = "observe";
  e.message = "an observer threw an exception";
  for (const auto& o : observers_) {
    if (o.get() == failed) continue;
    try {
      o->on_error(e);
    } catch (...) {
      failures_.fetch_add(1, std::memory_order_relaxed);
    }
  }
}

void ObserverList::validate(const ValidateEvent& event) const noexcept {
  each([&](Observer& o) { o.on_validate(event); });
}

void ObserverList::change(const AuditEvent& event) const noexcept {
  each([&](Observer& o) { o.on_change(event); });
}

void ObserverList::error(const BackgroundError& error) const noexcept {
  each([&](Observer& o) { o.on_error(error); });
}

void ObserverList::error(Component component, std::string_view operation, std::string_view message,
                         bool recovered) const noexcept {
  if (observers_.empty()) return;
  BackgroundError e;
  e.component = component;
  e.operation = operation;
  e.message = message;
  e.recovered = recovered;
  error(e);
}

void ObserverList::write(const BackgroundWrite& write) const noexcept {
  each([&](Observer& o) { o.on_write(write); });
}

}  // namespace detail

}  // namespace apikeys
