# Optional server backends, both OFF by default so the core builds with no servers'
# client libraries: PostgresStore (libpq), RedisCache and RedisLimiter (hiredis).
# Included by the top-level CMakeLists.txt right after add_library(apikeys).
#
# The client libraries are linked PRIVATE by absolute path (not through an imported
# target), so a static apikeys exported for find_package() needs no extra targets in
# the consumer's project: the path travels in the export as a plain link item.
option(APIKEYS_WITH_POSTGRES "Build apikeys::PostgresStore (needs libpq)" OFF)
option(APIKEYS_WITH_REDIS "Build apikeys::RedisCache and RedisLimiter (needs hiredis)" OFF)

if(APIKEYS_WITH_POSTGRES)
  find_package(PostgreSQL QUIET)
  if(PostgreSQL_FOUND)
    set(_apikeys_pq_include ${PostgreSQL_INCLUDE_DIRS})
    set(_apikeys_pq_link ${PostgreSQL_LIBRARIES})
  else()
    find_package(PkgConfig REQUIRED)
    pkg_check_modules(APIKEYS_LIBPQ REQUIRED libpq)
    set(_apikeys_pq_include ${APIKEYS_LIBPQ_INCLUDE_DIRS})
    set(_apikeys_pq_link ${APIKEYS_LIBPQ_LINK_LIBRARIES})
  endif()
  target_sources(apikeys PRIVATE ${PROJECT_SOURCE_DIR}/src/pg_connection.cpp
    ${PROJECT_SOURCE_DIR}/src/postgres_store.cpp)
  target_include_directories(apikeys SYSTEM PRIVATE ${_apikeys_pq_include})
  target_link_libraries(apikeys PRIVATE ${_apikeys_pq_link})
  target_compile_definitions(apikeys PUBLIC APIKEYS_HAS_POSTGRES=1)
  message(STATUS "apikeys: PostgresStore enabled (libpq: ${_apikeys_pq_link})")
endif()

if(APIKEYS_WITH_REDIS)
  find_package(PkgConfig REQUIRED)
  pkg_check_modules(APIKEYS_HIREDIS REQUIRED hiredis)
  target_sources(apikeys PRIVATE ${PROJECT_SOURCE_DIR}/src/redis_connection.cpp
    ${PROJECT_SOURCE_DIR}/src/redis_cache.cpp ${PROJECT_SOURCE_DIR}/src/redis_limiter.cpp)
  target_include_directories(apikeys SYSTEM PRIVATE ${APIKEYS_HIREDIS_INCLUDE_DIRS})
  target_link_libraries(apikeys PRIVATE ${APIKEYS_HIREDIS_LINK_LIBRARIES} Threads::Threads)
  target_compile_definitions(apikeys PUBLIC APIKEYS_HAS_REDIS=1)
  message(STATUS "apikeys: RedisCache enabled (hiredis: ${APIKEYS_HIREDIS_LINK_LIBRARIES})")
endif()
