# Declarative helpers so every folder's CMakeLists.txt stays short:
#   sy_cc_library(NAME n SRCS ... HDRS ... DEPS ...)
#   sy_cc_binary(NAME n SRCS ... DEPS ... [OUTPUT_NAME name])
#   sy_cc_test(NAME n SRCS ... DEPS ... [LABELS ...] [TIMEOUT s])
# Project targets get warnings-as-errors and the optional sanitizer; include
# paths are rooted at the repository top, so headers are included as
# "model/config.h".

# -Wmaybe-uninitialized: GCC 12 reports false positives on std::optional.
set(_sy_warnings -Wall -Wextra -Wpedantic -Wno-unused-parameter -Wnon-virtual-dtor
                 -Wno-maybe-uninitialized)
if(SWITCHYARD_WERROR)
  list(APPEND _sy_warnings -Werror)
endif()

set(_sy_san_flags "")
if(SWITCHYARD_SANITIZER STREQUAL "address")
  set(_sy_san_flags -fsanitize=address -fno-omit-frame-pointer)
elseif(SWITCHYARD_SANITIZER STREQUAL "undefined")
  set(_sy_san_flags -fsanitize=undefined -fno-sanitize-recover=undefined)
elseif(SWITCHYARD_SANITIZER STREQUAL "address,undefined")
  set(_sy_san_flags -fsanitize=address,undefined -fno-sanitize-recover=undefined
                    -fno-omit-frame-pointer)
elseif(SWITCHYARD_SANITIZER STREQUAL "thread")
  set(_sy_san_flags -fsanitize=thread)
elseif(NOT SWITCHYARD_SANITIZER STREQUAL "")
  message(FATAL_ERROR "SWITCHYARD_SANITIZER must be address, undefined, address,undefined, "
                      "thread or empty "
                      "(got '${SWITCHYARD_SANITIZER}')")
endif()

function(_sy_common_target_setup target)
  target_compile_options(${target} PRIVATE $<$<COMPILE_LANGUAGE:CXX>:${_sy_warnings}>
                                           $<$<COMPILE_LANGUAGE:CXX>:${_sy_san_flags}>)
  target_link_options(${target} PRIVATE ${_sy_san_flags})
  target_include_directories(${target} PUBLIC ${PROJECT_SOURCE_DIR})
endfunction()

function(sy_cc_library)
  cmake_parse_arguments(SY "" "NAME" "SRCS;HDRS;DEPS" ${ARGN})
  if(SY_SRCS)
    add_library(${SY_NAME} STATIC ${SY_SRCS} ${SY_HDRS})
    _sy_common_target_setup(${SY_NAME})
    target_link_libraries(${SY_NAME} PUBLIC ${SY_DEPS})
    set_target_properties(${SY_NAME} PROPERTIES POSITION_INDEPENDENT_CODE ON)
  else()
    add_library(${SY_NAME} INTERFACE ${SY_HDRS})
    target_include_directories(${SY_NAME} INTERFACE ${PROJECT_SOURCE_DIR})
    target_link_libraries(${SY_NAME} INTERFACE ${SY_DEPS})
  endif()
endfunction()

function(sy_cc_binary)
  cmake_parse_arguments(SY "" "NAME;OUTPUT_NAME" "SRCS;DEPS" ${ARGN})
  add_executable(${SY_NAME} ${SY_SRCS})
  _sy_common_target_setup(${SY_NAME})
  target_link_libraries(${SY_NAME} PRIVATE ${SY_DEPS})
  if(SY_OUTPUT_NAME)
    set_target_properties(${SY_NAME} PROPERTIES OUTPUT_NAME ${SY_OUTPUT_NAME})
  endif()
  set_target_properties(${SY_NAME} PROPERTIES RUNTIME_OUTPUT_DIRECTORY ${PROJECT_BINARY_DIR}/bin)
endfunction()

function(sy_cc_test)
  cmake_parse_arguments(SY "" "NAME;TIMEOUT" "SRCS;DEPS;LABELS;ARGS" ${ARGN})
  add_executable(${SY_NAME} ${SY_SRCS})
  _sy_common_target_setup(${SY_NAME})
  target_link_libraries(${SY_NAME} PRIVATE ${SY_DEPS} GTest::gtest GTest::gmock GTest::gtest_main)
  target_compile_definitions(${SY_NAME} PRIVATE
    SY_SOURCE_DIR="${PROJECT_SOURCE_DIR}" SY_BINARY_DIR="${PROJECT_BINARY_DIR}")
  set_target_properties(${SY_NAME} PROPERTIES RUNTIME_OUTPUT_DIRECTORY ${PROJECT_BINARY_DIR}/tests)
  add_test(NAME ${SY_NAME} COMMAND ${SY_NAME} ${SY_ARGS})
  if(NOT SY_TIMEOUT)
    set(SY_TIMEOUT 600)
  endif()
  set_tests_properties(${SY_NAME} PROPERTIES TIMEOUT ${SY_TIMEOUT} LABELS "${SY_LABELS}")
endfunction()
