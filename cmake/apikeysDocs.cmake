# The API reference: a `docs` target that runs Doxygen over the public headers and
# fails on any warning (an undocumented public declaration included).
# Off by default so that building apikeys never needs Doxygen; turn it on with
# -DAPIKEYS_BUILD_DOCS=ON (Debian: apt-get install doxygen).
option(APIKEYS_BUILD_DOCS "Add the docs target (Doxygen API reference)" OFF)
if(NOT APIKEYS_BUILD_DOCS)
  return()
endif()

find_package(Doxygen 1.9 REQUIRED COMPONENTS doxygen)

set(APIKEYS_DOCS_OUTPUT_DIR "${PROJECT_BINARY_DIR}/docs")
configure_file("${PROJECT_SOURCE_DIR}/cmake/Doxyfile.in" "${PROJECT_BINARY_DIR}/Doxyfile" @ONLY)

file(GLOB apikeys_public_headers CONFIGURE_DEPENDS "${PROJECT_SOURCE_DIR}/include/apikeys/*.hpp")
add_custom_command(
  OUTPUT "${APIKEYS_DOCS_OUTPUT_DIR}/html/index.html"
  COMMAND "${CMAKE_COMMAND}" -E remove_directory "${APIKEYS_DOCS_OUTPUT_DIR}/html"
  COMMAND Doxygen::doxygen "${PROJECT_BINARY_DIR}/Doxyfile"
  DEPENDS ${apikeys_public_headers}
          "${PROJECT_BINARY_DIR}/include/apikeys/version.hpp"
          "${PROJECT_BINARY_DIR}/Doxyfile"
  WORKING_DIRECTORY "${PROJECT_BINARY_DIR}"
  COMMENT "Doxygen: API reference in ${APIKEYS_DOCS_OUTPUT_DIR}/html (warnings are errors)"
  VERBATIM)
add_custom_target(docs DEPENDS "${APIKEYS_DOCS_OUTPUT_DIR}/html/index.html")
