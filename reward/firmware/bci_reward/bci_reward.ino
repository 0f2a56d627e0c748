// bci-rig reward board: normally-closed solenoid valve + lick sensor over an acknowledged line protocol.
//
// Protocol: see ../PROTOCOL.md (version 2). The Python twin is reward/board_model.py (FirmwareEmulator);
// the two must produce the same bytes for the same input at the same board times:
// tests/test_reward_emulator.py compiles this sketch with g++ against a stub Arduino core and compares
// both on random traffic. Keep them in step when changing either. tests/test_reward_firmware_build.py builds
// it for the Uno with avr-gcc and the Arduino core and keeps RAM under 75 % (the stack needs the rest).
//
// Target: Arduino Uno/Nano (ATmega328P, Optiboot bootloader, which copes with the hardware watchdog
// below); any core with Serial.availableForWrite() works.
//
// Safety, in order of defence:
//   1. Hardware: a normally-closed valve behind a logic-level MOSFET whose gate has a pull-down, so
//      reset, brown-out, a floating pin or a dead board all mean "closed".
//   2. Every opening has a requested duration (<= MAX_OPEN_US) and closes on its own; a second
//      guard closes any opening that reaches MAX_OPEN_US whatever the request said.
//   3. Duty-cycle limit, whatever the host asks: at most DUTY_MAX_OPEN_US of open time in any
//      DUTY_WINDOW_US (20 % of 10 s). An OPEN/TEST that would pass it is refused (NAK DUTY), a guard
//      closes an opening that reaches it, and the count survives a reset (it is kept in .noinit RAM),
//      so resetting the board (e.g. by toggling DTR) does not restore the budget.
//   4. Heartbeat watchdog: without a valid line from the host for watchdog_ms (HELLO sets it,
//      default 500 ms) the valve closes and OPEN/TEST are refused until a new HELLO.
//   5. AVR hardware watchdog: if loop() ever stalls for 500 ms the chip resets (valve pin -> input,
//      pulled down -> closed).
//   6. Nothing blocks in loop(): output goes through a ring buffer drained only as fast as the UART
//      accepts it, so serial traffic can never delay closing the valve.
// Retries are safe: the last DEDUPE_SLOTS pulses are remembered by sequence number and a repeated
// OPEN/TEST is re-acknowledged (with its original time, and its DONE if finished), never re-executed.
// Accounting: the last LOG_SLOTS openings (seq, duration, measured open time, how they ended) are kept in
// a log that survives a reset and a reconnect of the same host (HELLO with the same link id), so the host
// can ask (LOG) what the valve dispensed for a pulse whose DONE it never read.

#include <Arduino.h>
#if defined(__AVR__)
#include <avr/wdt.h>
#define KEPT_ACROSS_RESET __attribute__((section(".noinit")))  // not cleared by the C runtime at reset
#else
#define KEPT_ACROSS_RESET  // the conformance test's stub: plain statics, which its "reset" leaves alone
#endif

// ------------------------------------------------------------------ wiring and limits
const uint8_t VALVE_PIN = 8;            // drives the MOSFET gate (pull-down resistor on the gate)
const uint8_t VALVE_OPEN_LEVEL = HIGH;
const uint8_t LICK_PIN = 2;             // lick sensor output (e.g. capacitive sensor or contact circuit)
const uint8_t LICK_ACTIVE_LEVEL = HIGH;
const unsigned long BAUD = 115200;

const uint32_t MAX_OPEN_US = 2000000UL;  // hard maximum of any one opening
const uint32_t DUTY_WINDOW_US = 10000000UL;   // the duty-cycle limit's window...
const uint32_t DUTY_MAX_OPEN_US = 2000000UL;  // ...and the most open time allowed in it (20 %)
const uint32_t DUTY_BUCKET_US = DUTY_WINDOW_US / 10;
const uint32_t LICK_DEBOUNCE_US = 1000UL;
const uint32_t WATCHDOG_MIN_MS = 50;
const uint32_t WATCHDOG_MAX_MS = 10000;

#define PROTOCOL_VERSION 2
#define FIRMWARE_VERSION "2.0.0"
#define MAX_IN_LINE 64     // bytes before '\n' accepted from the host
#define MAX_OUT_LINE 128   // longest line this board sends, newline included
#define MAX_TOKENS 8
#define DEDUPE_SLOTS 8
#define LOG_SLOTS 16
#define DUTY_BUCKETS 11  // the current bucket and the 10 before it: always at least one whole window
#define TX_RING_SIZE 256
#define KEPT_MAGIC 0x6B657032UL

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

// One opening in the pulse log. state: 0 = empty slot, 'O' = holds the valve open now, 'R' = the board
// was reset while it did (open time unknown), else the DONE cause it closed with.
struct LogEntry {
  uint32_t seq;
  uint32_t durationUs;
  uint32_t openUs;
  char state;
};

// What survives a reset (not a power cycle): valid only if magic and check match (power-on RAM is random).
struct Kept {
  uint32_t magic;
  uint32_t linkId;       // the host link the log belongs to (HELLO); 0 = none
  uint32_t dutyCarryUs;  // open time that may lie in the last window: booked again after a reset
  uint8_t logNext;
  LogEntry log[LOG_SLOTS];
  uint32_t check;
};

static Kept kept KEPT_ACROSS_RESET;

// Everything below is set by initState() in setup(): a reset starts from the same state however RAM was left.
static PulseRecord slots[DEDUPE_SLOTS];
static uint8_t nextSlot;
static int8_t activeSlot;  // the pulse holding the valve open
static uint8_t activeLog;  // its log entry

static bool valveOpen;
static uint64_t openedAt;
static uint32_t pulseUs;
static uint32_t dutyAllowUs;  // how long this opening may last within the duty-cycle limit

static uint32_t dutyOpenUs[DUTY_BUCKETS];  // open time per bucket; index = bucket number % DUTY_BUCKETS
static uint32_t dutyBucket;                // number (board time / DUTY_BUCKET_US) of the newest bucket
static uint64_t dutyNextUs;                // board time at which the next bucket starts

static bool linked;
static uint64_t lastHostUs;
static uint32_t watchdogUs;

static uint32_t pulseCount;
static uint32_t rejectedCount;
static uint32_t droppedCount;

static bool lickCandidate;
static uint64_t lickCandidateSince;
static bool lickState;
static uint32_t lickCount;

static char inBuf[MAX_IN_LINE + 1];
static uint8_t inLen;
static bool inOverflow;

static char outBuf[MAX_OUT_LINE + 1];
static uint8_t outLen;

static uint8_t txRing[TX_RING_SIZE];
static uint16_t txHead;  // next byte to send
static uint16_t txCount;

static void initState() {
  for (uint8_t i = 0; i < DEDUPE_SLOTS; i++) slots[i].used = false;
  nextSlot = 0;
  activeSlot = -1;
  activeLog = 0;
  valveOpen = false;
  openedAt = 0;
  pulseUs = 0;
  dutyAllowUs = 0;
  for (uint8_t i = 0; i < DUTY_BUCKETS; i++) dutyOpenUs[i] = 0;
  dutyBucket = 0;
  dutyNextUs = 0;
  linked = false;
  lastHostUs = 0;
  watchdogUs = 500000UL;
  pulseCount = 0;
  rejectedCount = 0;
  droppedCount = 0;
  lickCandidate = false;
  lickCandidateSince = 0;
  lickState = false;
  lickCount = 0;
  inLen = 0;
  inOverflow = false;
  outLen = 0;
  txHead = 0;
  txCount = 0;
}

// ------------------------------------------------------------------ 64-bit microsecond clock
// Not in initState(): it follows micros(), which a reset restarts (and the C runtime zeroes these with it).
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

// ------------------------------------------------------------------ kept across a reset
static uint32_t keptChecksum() {
  uint32_t words[4] = {kept.magic, kept.linkId, kept.dutyCarryUs, kept.logNext};
  uint32_t h = 0x811C9DC5UL;
  for (uint8_t i = 0; i < 4; i++) h = ((h << 7) | (h >> 25)) + words[i];
  for (uint8_t i = 0; i < LOG_SLOTS; i++) {
    const LogEntry &e = kept.log[i];
    h = ((h << 7) | (h >> 25)) + e.seq;
    h = ((h << 7) | (h >> 25)) + e.durationUs;
    h = ((h << 7) | (h >> 25)) + e.openUs;
    h = ((h << 7) | (h >> 25)) + (uint8_t)e.state;
  }
  return h;
}

static void keptSeal() { kept.check = keptChecksum(); }

static void clearLog() {
  for (uint8_t i = 0; i < LOG_SLOTS; i++) {
    kept.log[i].seq = 0;
    kept.log[i].durationUs = 0;
    kept.log[i].openUs = 0;
    kept.log[i].state = 0;
  }
  kept.logNext = 0;
}

// ------------------------------------------------------------------ duty-cycle limit
// Open time is booked in buckets of DUTY_BUCKET_US as it happens; the current bucket and the 10 before it
// cover at least the last DUTY_WINDOW_US, so an opening allowed while their sum + its duration stays within
// DUTY_MAX_OPEN_US keeps every window of DUTY_WINDOW_US within it.
static uint32_t dutyUsed() {
  uint32_t sum = 0;
  for (uint8_t i = 0; i < DUTY_BUCKETS; i++) sum += dutyOpenUs[i];
  return sum;
}

// The carry a reset would book again: what the buckets hold, plus all of a running opening.
static void dutyKeep() {
  kept.dutyCarryUs = dutyUsed() + (valveOpen ? pulseUs : 0);
  keptSeal();
}

// Moves the newest bucket up to the one holding `now`, emptying those that fell out of the window.
static void dutyAdvance(uint64_t now) {
  if (now < dutyNextUs) return;
  uint32_t bucket = (uint32_t)(now / DUTY_BUCKET_US);
  if (bucket - dutyBucket >= DUTY_BUCKETS) {
    for (uint8_t i = 0; i < DUTY_BUCKETS; i++) dutyOpenUs[i] = 0;
  } else {
    while (dutyBucket != bucket) {
      dutyBucket++;
      dutyOpenUs[dutyBucket % DUTY_BUCKETS] = 0;
    }
  }
  dutyBucket = bucket;
  dutyNextUs = ((uint64_t)bucket + 1) * DUTY_BUCKET_US;
  dutyKeep();
}

// Books the opening [from, to) into the buckets it spans (only those still in the window).
static void dutyBook(uint64_t from, uint64_t to) {
  dutyAdvance(to);
  if (dutyBucket >= DUTY_BUCKETS - 1) {
    uint64_t oldest = (uint64_t)(dutyBucket - (DUTY_BUCKETS - 1)) * DUTY_BUCKET_US;
    if (from < oldest) from = oldest;
  }
  while (from < to) {
    uint32_t bucket = (uint32_t)(from / DUTY_BUCKET_US);
    uint64_t end = ((uint64_t)bucket + 1) * DUTY_BUCKET_US;
    if (end > to) end = to;
    dutyOpenUs[bucket % DUTY_BUCKETS] += (uint32_t)(end - from);
    from = end;
  }
}

// After a reset: a valid kept block is a warm reset (the log and the duty carry go on), else a power-on.
static void recoverKept(uint64_t now) {
  if (kept.magic != KEPT_MAGIC || kept.check != keptChecksum() || kept.logNext >= LOG_SLOTS) {
    kept.magic = KEPT_MAGIC;
    kept.linkId = 0;
    kept.dutyCarryUs = 0;
    clearLog();
  } else {
    for (uint8_t i = 0; i < LOG_SLOTS; i++) {
      if (kept.log[i].state == 'O') kept.log[i].state = 'R';  // the reset closed it; for how long is unknown
    }
  }
  uint32_t carry = kept.dutyCarryUs;
  dutyAdvance(now);
  dutyOpenUs[dutyBucket % DUTY_BUCKETS] += carry;  // counted as if it had just happened: it may have
  dutyKeep();
}

// ------------------------------------------------------------------ valve
static void openValve(int8_t slot, uint32_t allowUs, uint64_t now) {
  digitalWrite(VALVE_PIN, VALVE_OPEN_LEVEL);
  valveOpen = true;
  openedAt = now;
  pulseUs = slots[slot].durationUs;
  dutyAllowUs = allowUs;
  activeSlot = slot;
  pulseCount++;
  activeLog = kept.logNext;
  LogEntry &e = kept.log[activeLog];
  e.seq = slots[slot].seq;
  e.durationUs = pulseUs;
  e.openUs = 0;
  e.state = 'O';
  kept.logNext = (uint8_t)((kept.logNext + 1) % LOG_SLOTS);
  dutyKeep();
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
  LogEntry &e = kept.log[activeLog];
  e.openUs = r.openUs;
  e.state = cause;
  dutyBook(openedAt, now);
  dutyKeep();
  sendDone(r);
}

static void serviceValve(uint64_t now) {
  if (!valveOpen) return;
  uint64_t elapsed = now - openedAt;
  if (elapsed >= pulseUs) {
    closeValve(now, 'T');
  } else if (elapsed >= MAX_OPEN_US) {
    closeValve(now, 'M');
  } else if (elapsed >= dutyAllowUs) {
    closeValve(now, 'D');
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
  uint32_t protocol, watchdogMs, linkId;
  if (argc != 3 || !parseU32(args[0], &protocol) || !parseU32(args[1], &watchdogMs) ||
      !parseU32(args[2], &linkId)) {
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
  bool resumed = linkId != 0 && linkId == kept.linkId;  // the same host again: its pulse log is kept
  ackBegin(seq, now, "HELLO");
  outSpaceU32(PROTOCOL_VERSION);
  outPutc(' ');
  outStr(FIRMWARE_VERSION);
  outSpaceU32(MAX_OPEN_US / 1000);
  outSpaceU32(watchdogMs);
  outSpaceU32(resumed ? 1 : 0);
  outSpaceU32(DUTY_MAX_OPEN_US / 1000);
  outSpaceU32(DUTY_WINDOW_US / 1000);
  outEnd();
  if (valveOpen) closeValve(now, 'H');
  for (uint8_t i = 0; i < DEDUPE_SLOTS; i++) slots[i].used = false;
  nextSlot = 0;
  if (!resumed) {
    clearLog();  // another host (or none before): its pulses are not this one's to ask about
    kept.linkId = linkId;
    keptSeal();
  }
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
  dutyAdvance(now);
  uint32_t used = dutyUsed();
  uint32_t left = used >= DUTY_MAX_OPEN_US ? 0 : DUTY_MAX_OPEN_US - used;
  if (duration > left) {
    sendNak(seq, now, "DUTY", left);
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
  openValve(slot, left, now);
}

static void cmdLog(uint32_t seq, char **args, uint8_t argc, uint64_t now) {
  uint32_t pulseSeq;
  if (argc != 1 || !parseU32(args[0], &pulseSeq)) {
    sendNak(seq, now, "ARGS", 0);
    return;
  }
  ackBegin(seq, now, "LOG");
  outSpaceU32(pulseSeq);
  for (uint8_t k = 1; k <= LOG_SLOTS; k++) {  // newest first
    const LogEntry &e = kept.log[(kept.logNext + LOG_SLOTS - k) % LOG_SLOTS];
    if (e.state == 0 || e.seq != pulseSeq) continue;
    uint64_t openUs = e.openUs;
    if (e.state == 'O') openUs = now - openedAt;
    outSpaceU32(e.durationUs);
    outSpaceU32(openUs > 0xFFFFFFFFULL ? 0xFFFFFFFFUL : (uint32_t)openUs);
    outPutc(' ');
    outPutc(e.state);
    outEnd();
    return;
  }
  outStr(" 0 0 -");
  outEnd();
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
  } else if (strcmp(name, "LOG") == 0) {
    cmdLog(seq, args, argc, now);
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
  initState();
  uint64_t now = nowUs();
  recoverKept(now);
  outBegin("BOOT");
  outSpaceU64(now);
  outSpaceU32(PROTOCOL_VERSION);
  outPutc(' ');
  outStr(FIRMWARE_VERSION);
  outEnd();
}

void loop() {
  uint64_t now = nowUs();
  dutyAdvance(now);  // keeps the carry a reset would book fresh (once per bucket)
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
