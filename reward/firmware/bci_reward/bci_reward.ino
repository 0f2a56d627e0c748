// bci-rig reward board: normally-closed solenoid valve + lick sensor over an acknowledged line protocol.
//
// Protocol: see ../PROTOCOL.md (version 1). The Python twin is reward/board_model.py (FirmwareEmulator);
// the two must produce the same bytes for the same input at the same board times:
// tests/test_reward_emulator.py compiles this sketch with g++ against a stub Arduino core and compares
// both on random traffic. Keep them in step when changing either.
//
// Target: Arduino Uno/Nano (ATmega328P, Optiboot bootloader, which copes with the hardware watchdog
// below); any core with Serial.availableForWrite() works.
//
// Safety, in order of defence:
//   1. Hardware: a normally-closed valve behind a logic-level MOSFET whose gate has a pull-down, so
//      reset, brown-out, a floating pin or a dead board all mean "closed".
//   2. Every opening has a requested duration (<= MAX_OPEN_US) and closes on its own; a second
//      guard closes any opening that reaches MAX_OPEN_US whatever the request said.
//   3. Heartbeat watchdog: without a valid line from the host for watchdog_ms (HELLO sets it,
//      default 500 ms) the valve closes and OPEN/TEST are refused until a new HELLO.
//   4. AVR hardware watchdog: if loop() ever stalls for 500 ms the chip resets (valve pin -> input,
//      pulled down -> closed).
//   5. Nothing blocks in loop(): output goes through a ring buffer drained only as fast as the UART
//      accepts it, so serial traffic can never delay closing the valve.
// Retries are safe: the last DEDUPE_SLOTS pulses are remembered by sequence number and a repeated
// OPEN/TEST is re-acknowledged (with its original time, and its DONE if finished), never re-executed.

#include <Arduino.h>
#if defined(__AVR__)
#include <avr/wdt.h>
#endif

// ------------------------------------------------------------------ wiring and limits
const uint8_t VALVE_PIN = 8;            // drives the MOSFET gate (pull-down resistor on the gate)
const uint8_t VALVE_OPEN_LEVEL = HIGH;
const uint8_t LICK_PIN = 2;             // lick sensor output (e.g. capacitive sensor or contact circuit)
const uint8_t LICK_ACTIVE_LEVEL = HIGH;
const unsigned long BAUD = 115200;

const uint32_t MAX_OPEN_US = 2000000UL;  // hard maximum of any one opening
const uint32_t LICK_DEBOUNCE_US = 1000UL;
const uint32_t WATCHDOG_MIN_MS = 50;
const uint32_t WATCHDOG_MAX_MS = 10000;

#define PROTOCOL_VERSION 1
#define FIRMWARE_VERSION "1.0.0"
#define MAX_IN_LINE 64     // bytes before '\n' accepted from the host
#define MAX_OUT_LINE 128   // longest line this board sends, newline included
#define MAX_TOKENS 8
#define DEDUPE_SLOTS 8
#define TX_RING_SIZE 256

// ------------------------------------------------------------------ state
struct PulseRecord {
  bool used;
  uint32_t seq;
  bool isTest;
  uint32_t durationUs;
  uint64_t ackUs;
  bool done;
  uint64_t doneUs;
  uint32_t openUs;
  char cause;
};

static PulseRecord slots[DEDUPE_SLOTS];
static uint8_t nextSlot = 0;
static int8_t activeSlot = -1;  // the pulse holding the valve open

static bool valveOpen = false;
static uint64_t openedAt = 0;
static uint32_t pulseUs = 0;

static bool linked = false;
static uint64_t lastHostUs = 0;
static uint32_t watchdogUs = 500000UL;

static uint32_t pulseCount = 0;
static uint32_t rejectedCount = 0;
static uint32_t droppedCount = 0;

static bool lickCandidate = false;
static uint64_t lickCandidateSince = 0;
static bool lickState = false;
static uint32_t lickCount = 0;

static char inBuf[MAX_IN_LINE + 1];
static uint8_t inLen = 0;
static bool inOverflow = false;

static char outBuf[MAX_OUT_LINE + 1];
static uint8_t outLen = 0;

static uint8_t txRing[TX_RING_SIZE];
static uint16_t txHead = 0;  // next byte to send
static uint16_t txCount = 0;

// ------------------------------------------------------------------ 64-bit microsecond clock
static uint32_t lastMicros = 0;
static uint32_t microsHigh = 0;

static uint64_t nowUs() {
  uint32_t m = micros();
  if (m < lastMicros) microsHigh++;  // micros() wraps every ~71.6 min; loop() calls this far more often
  lastMicros = m;
  return ((uint64_t)microsHigh << 32) | m;
}

// ------------------------------------------------------------------ output
static void outPutc(char c) {
  if (outLen < MAX_OUT_LINE - 4) outBuf[outLen++] = c;  // room kept for "*HH\n"
}

static void outStr(const char *s) {
  while (*s) outPutc(*s++);
}

static void outU32(uint32_t v) {
  char tmp[10];
  uint8_t n = 0;
  do {
    tmp[n++] = (char)('0' + (v % 10));
    v /= 10;
  } while (v);
  while (n) outPutc(tmp[--n]);
}

static void outU64(uint64_t v) {
  if (v <= 0xFFFFFFFFULL) {
    outU32((uint32_t)v);
    return;
  }
  char tmp[20];
  uint8_t n = 0;
  while (v) {
    tmp[n++] = (char)('0' + (uint8_t)(v % 10));
    v /= 10;
  }
  while (n) outPutc(tmp[--n]);
}

static void outSpaceU32(uint32_t v) {
  outPutc(' ');
  outU32(v);
}

static void outSpaceU64(uint64_t v) {
  outPutc(' ');
  outU64(v);
}

static void outBegin(const char *type) {
  outLen = 0;
  outStr(type);
}

static char hexDigit(uint8_t v) { return (char)(v < 10 ? '0' + v : 'A' + v - 10); }

// Adds the checksum and newline and queues the line whole, or drops it whole if the ring is full.
static void outEnd() {
  uint8_t sum = 0;
  for (uint8_t i = 0; i < outLen; i++) sum ^= (uint8_t)outBuf[i];
  outBuf[outLen++] = '*';
  outBuf[outLen++] = hexDigit(sum >> 4);
  outBuf[outLen++] = hexDigit(sum & 0x0F);
  outBuf[outLen++] = '\n';
  if (txCount + outLen > TX_RING_SIZE) {
    droppedCount++;
    return;
  }
  for (uint8_t i = 0; i < outLen; i++) {
    txRing[(txHead + txCount) % TX_RING_SIZE] = (uint8_t)outBuf[i];
    txCount++;
  }
}

static void flushTx() {
  while (txCount > 0) {
    int room = Serial.availableForWrite();
    if (room <= 0) return;
    Serial.write(txRing[txHead]);
    txHead = (txHead + 1) % TX_RING_SIZE;
    txCount--;
  }
}

static void sendError(uint64_t now, const char *code) {
  rejectedCount++;
  outBegin("ERR");
  outSpaceU64(now);
  outPutc(' ');
  outStr(code);
  outEnd();
}

static void sendNak(uint32_t seq, uint64_t now, const char *code, uint32_t detail) {
  rejectedCount++;
  outBegin("NAK");
  outSpaceU32(seq);
  outSpaceU64(now);
  outPutc(' ');
  outStr(code);
  outSpaceU32(detail);
  outEnd();
}

// Starts "ACK <seq> <us> <command>"; the caller appends fields and calls outEnd().
static void ackBegin(uint32_t seq, uint64_t us, const char *command) {
  outBegin("ACK");
  outSpaceU32(seq);
  outSpaceU64(us);
  outPutc(' ');
  outStr(command);
}

static void sendDone(const PulseRecord &r) {
  outBegin("DONE");
  outSpaceU32(r.seq);
  outSpaceU64(r.doneUs);
  outSpaceU32(r.openUs);
  outPutc(' ');
  outPutc(r.cause);
  outEnd();
}

// ------------------------------------------------------------------ valve
static void openValve(int8_t slot, uint64_t now) {
  digitalWrite(VALVE_PIN, VALVE_OPEN_LEVEL);
  valveOpen = true;
  openedAt = now;
  pulseUs = slots[slot].durationUs;
  activeSlot = slot;
  pulseCount++;
}

static void closeValve(uint64_t now, char cause) {
  digitalWrite(VALVE_PIN, VALVE_OPEN_LEVEL == HIGH ? LOW : HIGH);
  valveOpen = false;
  uint64_t elapsed = now - openedAt;
  PulseRecord &r = slots[activeSlot];
  activeSlot = -1;
  r.done = true;
  r.doneUs = now;
  r.openUs = elapsed > 0xFFFFFFFFULL ? 0xFFFFFFFFUL : (uint32_t)elapsed;
  r.cause = cause;
  sendDone(r);
}

static void serviceValve(uint64_t now) {
  if (!valveOpen) return;
  uint64_t elapsed = now - openedAt;
  if (elapsed >= pulseUs) {
    closeValve(now, 'T');
  } else if (elapsed >= MAX_OPEN_US) {
    closeValve(now, 'M');
  }
}

static void serviceWatchdog(uint64_t now) {
  if (linked && now - lastHostUs >= watchdogUs) {
    linked = false;
    outBegin("WDOG");
    outSpaceU64(now);
    outEnd();
    if (valveOpen) closeValve(now, 'W');
  }
}

static void serviceLick(uint64_t now) {
  bool raw = digitalRead(LICK_PIN) == LICK_ACTIVE_LEVEL;
  if (raw != lickCandidate) {
    lickCandidate = raw;
    lickCandidateSince = now;
  }
  if (lickCandidate != lickState && now - lickCandidateSince >= LICK_DEBOUNCE_US) {
    lickState = lickCandidate;
    lickCount++;
    outBegin("LICK");
    outSpaceU32(lickCount);
    outSpaceU64(lickCandidateSince);
    outPutc(' ');
    outPutc(lickState ? '1' : '0');
    outEnd();
  }
}

// ------------------------------------------------------------------ parsing
static bool parseU32(const char *s, uint32_t *out) {
  uint8_t n = 0;
  uint64_t v = 0;
  for (; s[n]; n++) {
    if (n >= 10 || s[n] < '0' || s[n] > '9') return false;
    v = v * 10 + (uint8_t)(s[n] - '0');
  }
  if (n == 0 || v > 0xFFFFFFFFULL) return false;
  *out = (uint32_t)v;
  return true;
}

static int8_t hexValue(char c) {
  if (c >= '0' && c <= '9') return (int8_t)(c - '0');
  if (c >= 'A' && c <= 'F') return (int8_t)(c - 'A' + 10);
  if (c >= 'a' && c <= 'f') return (int8_t)(c - 'a' + 10);
  return -1;
}

// ------------------------------------------------------------------ commands
static void cmdHello(uint32_t seq, char **args, uint8_t argc, uint64_t now) {
  uint32_t protocol, watchdogMs;
  if (argc != 2 || !parseU32(args[0], &protocol) || !parseU32(args[1], &watchdogMs)) {
    sendNak(seq, now, "ARGS", 0);
    return;
  }
  if (protocol != PROTOCOL_VERSION) {
    sendNak(seq, now, "VERSION", PROTOCOL_VERSION);
    return;
  }
  if (watchdogMs < WATCHDOG_MIN_MS || watchdogMs > WATCHDOG_MAX_MS) {
    sendNak(seq, now, "RANGE", WATCHDOG_MAX_MS);
    return;
  }
  ackBegin(seq, now, "HELLO");
  outSpaceU32(PROTOCOL_VERSION);
  outPutc(' ');
  outStr(FIRMWARE_VERSION);
  outSpaceU32(MAX_OPEN_US / 1000);
  outSpaceU32(watchdogMs);
  outEnd();
  if (valveOpen) closeValve(now, 'H');
  for (uint8_t i = 0; i < DEDUPE_SLOTS; i++) slots[i].used = false;
  nextSlot = 0;
  linked = true;
  lastHostUs = now;
  watchdogUs = watchdogMs * 1000UL;
}

static void cmdPulse(bool isTest, uint32_t seq, char **args, uint8_t argc, uint64_t now) {
  const char *name = isTest ? "TEST" : "OPEN";
  uint32_t duration;
  if (argc != 1 || !parseU32(args[0], &duration)) {
    sendNak(seq, now, "ARGS", 0);
    return;
  }
  for (uint8_t i = 0; i < DEDUPE_SLOTS; i++) {
    PulseRecord &r = slots[i];
    if (!r.used || r.seq != seq) continue;
    if (r.isTest != isTest || r.durationUs != duration) {
      sendNak(seq, now, "SEQ", 0);
      return;
    }
    // A retry of a pulse already executed: repeat what was said, never re-open.
    ackBegin(seq, r.ackUs, name);
    outSpaceU32(duration);
    outEnd();
    if (r.done) sendDone(r);
    return;
  }
  if (!linked) {
    sendNak(seq, now, "NOLINK", 0);
    return;
  }
  if (duration < 1 || duration > MAX_OPEN_US) {
    sendNak(seq, now, "RANGE", MAX_OPEN_US);
    return;
  }
  if (valveOpen) {
    sendNak(seq, now, "BUSY", slots[activeSlot].seq);
    return;
  }
  int8_t slot = (int8_t)nextSlot;
  nextSlot = (uint8_t)((nextSlot + 1) % DEDUPE_SLOTS);
  PulseRecord &r = slots[slot];
  r.used = true;
  r.seq = seq;
  r.isTest = isTest;
  r.durationUs = duration;
  r.ackUs = now;
  r.done = false;
  r.doneUs = 0;
  r.openUs = 0;
  r.cause = 'T';
  ackBegin(seq, now, name);
  outSpaceU32(duration);
  outEnd();
  openValve(slot, now);
}

static void executeLine(uint64_t now) {
  // Framing: one trailing CR is dropped; an empty line is ignored (hosts send one to resynchronise).
  uint8_t len = inLen;
  if (len > 0 && inBuf[len - 1] == '\r') len--;
  if (len == 0) return;
  for (uint8_t i = 0; i < len; i++) {
    if (inBuf[i] < 0x20 || inBuf[i] > 0x7E) {
      sendError(now, "CHAR");
      return;
    }
  }
  if (len < 3 || inBuf[len - 3] != '*' || hexValue(inBuf[len - 2]) < 0 || hexValue(inBuf[len - 1]) < 0) {
    sendError(now, "CSUM");
    return;
  }
  uint8_t bodyLen = len - 3;
  uint8_t sum = 0;
  for (uint8_t i = 0; i < bodyLen; i++) sum ^= (uint8_t)inBuf[i];
  if (sum != (uint8_t)((hexValue(inBuf[len - 2]) << 4) | hexValue(inBuf[len - 1]))) {
    sendError(now, "CSUM");
    return;
  }
  inBuf[bodyLen] = '\0';

  // Tokens separated by single spaces; an empty token (double, leading or trailing space) is an error.
  char *tokens[MAX_TOKENS];
  uint8_t count = 0;
  char *start = inBuf;
  for (uint8_t i = 0; i <= bodyLen; i++) {
    if (i == bodyLen || inBuf[i] == ' ') {
      if (&inBuf[i] == start || count == MAX_TOKENS) {
        sendError(now, "SYNTAX");
        return;
      }
      tokens[count++] = start;
      inBuf[i] = '\0';
      start = &inBuf[i + 1];
    }
  }
  uint32_t seq;
  if (count < 2 || !parseU32(tokens[1], &seq)) {
    sendError(now, "SYNTAX");
    return;
  }
  if (linked) lastHostUs = now;  // any valid command proves the host is alive

  const char *name = tokens[0];
  char **args = &tokens[2];
  uint8_t argc = count - 2;
  if (strcmp(name, "HELLO") == 0) {
    cmdHello(seq, args, argc, now);
  } else if (strcmp(name, "HB") == 0) {
    if (argc != 0) {
      sendNak(seq, now, "ARGS", 0);
    } else if (!linked) {
      sendNak(seq, now, "NOLINK", 0);
    } else {
      ackBegin(seq, now, "HB");
      outEnd();
    }
  } else if (strcmp(name, "OPEN") == 0) {
    cmdPulse(false, seq, args, argc, now);
  } else if (strcmp(name, "TEST") == 0) {
    cmdPulse(true, seq, args, argc, now);
  } else if (strcmp(name, "CLOSE") == 0) {
    if (argc != 0) {
      sendNak(seq, now, "ARGS", 0);
      return;
    }
    bool wasOpen = valveOpen;
    ackBegin(seq, now, "CLOSE");
    outSpaceU32(wasOpen ? 1 : 0);
    outEnd();
    if (wasOpen) closeValve(now, 'C');
  } else if (strcmp(name, "STATUS") == 0) {
    if (argc != 0) {
      sendNak(seq, now, "ARGS", 0);
      return;
    }
    ackBegin(seq, now, "STATUS");
    outSpaceU32(linked ? 1 : 0);
    outSpaceU32(valveOpen ? 1 : 0);
    outSpaceU32(lickState ? 1 : 0);
    outSpaceU32(pulseCount);
    outSpaceU32(rejectedCount);
    outSpaceU32(droppedCount);
    outEnd();
  } else {
    sendNak(seq, now, "UNKNOWN", 0);
  }
}

static void onByte(uint8_t c, uint64_t now) {
  if (c == '\n') {
    if (inOverflow) {
      inOverflow = false;  // the oversized line is over: resynchronised
    } else {
      executeLine(now);
    }
    inLen = 0;
    return;
  }
  if (inOverflow) return;
  if (inLen >= MAX_IN_LINE) {
    inOverflow = true;
    inLen = 0;
    sendError(now, "LONG");
    return;
  }
  inBuf[inLen++] = (char)c;
}

// ------------------------------------------------------------------ setup / loop
void setup() {
  digitalWrite(VALVE_PIN, VALVE_OPEN_LEVEL == HIGH ? LOW : HIGH);  // closed before it becomes an output
  pinMode(VALVE_PIN, OUTPUT);
  pinMode(LICK_PIN, INPUT);
  Serial.begin(BAUD);
#if defined(__AVR__)
  wdt_enable(WDTO_500MS);
#endif
  outBegin("BOOT");
  outSpaceU64(nowUs());
  outSpaceU32(PROTOCOL_VERSION);
  outPutc(' ');
  outStr(FIRMWARE_VERSION);
  outEnd();
}

void loop() {
  uint64_t now = nowUs();
  serviceValve(now);
  serviceWatchdog(now);
  serviceLick(now);
  while (Serial.available() > 0) {
    int c = Serial.read();
    if (c < 0) break;
    onByte((uint8_t)c, now);
  }
  flushTx();
#if defined(__AVR__)
  wdt_reset();
#endif
}
