function bciRigStream(src, evt, varargin) %#ok<INUSD>
%BCIRIGSTREAM ScanImage user function: send every acquired frame to bci-rig over TCP.
%
%   NOT YET RUN ON A SCANIMAGE RIG: written from ScanImage's user-function documentation; the Python
%   side it talks to is tested (tests/test_acq_scope_sources.py). Check the property names below against
%   your ScanImage version the first time, and the image orientation with `rig check --probe`.
%
%   Install (docs/SCOPES.md): put this file on MATLAB's path; in ScanImage open Settings > User
%   Functions, add an entry with Event Name "frameAcquired", User Function "bciRigStream", enable it.
%   Start bci-rig (its scanimage_tcp source listens on RIG_HOST:RIG_PORT) before FOCUS/GRAB.
%
%   Wire format (docs/FRAME_STREAM.md, "Framed TCP"): a 32-byte little-endian header
%     'BCIF' | uint16 version = 1 | uint16 header length = 32 | uint64 frame number | double time stamp (s)
%     | uint16 height | uint16 width | uint8 pixel type (1 = int16) | uint8 channel (0-based) | uint16 0
%   then height*width pixels, little-endian, row after row (MATLAB is column-major: img.' is sent).
%
%   A frame that cannot be sent (bci-rig not running) is dropped: ScanImage must never wait for the rig.
%   The connection is retried at most once a second; bci-rig counts the missing frame numbers.

RIG_HOST = '127.0.0.1';   % EDIT: the rig PC (this PC: 127.0.0.1)
RIG_PORT = 30002;         % EDIT: [acquisition.scanimage_tcp] port
CHANNEL = 1;              % EDIT: the ScanImage channel to send (1-based, as in the Channels window)
TRANSPOSE = false;        % set true if the probe shows the image transposed

persistent client lastTry nFailed
if isempty(nFailed)
    nFailed = 0;
    lastTry = uint64(0);
end

hSI = src.hSI;
displayed = hSI.hChannels.channelDisplay;
ci = find(displayed == CHANNEL, 1);
if isempty(ci)
    return  % the channel is not displayed: ScanImage keeps no lastFrame for it
end
img = hSI.hDisplay.lastFrame{ci};                  % int16, lines x pixels
if TRANSPOSE
    img = img.';
end
frameNumber = double(hSI.hDisplay.lastFrameNumber);
timestamp = NaN;
stripe = hSI.hDisplay.lastStripeData;
if ~isempty(stripe) && (isfield(stripe, 'frameTimestamp') || isprop(stripe, 'frameTimestamp'))
    timestamp = double(stripe.frameTimestamp);
end

[h, w] = size(img);
header = [uint8('BCIF'), typecast(uint16(1), 'uint8'), typecast(uint16(32), 'uint8'), ...
          typecast(uint64(max(frameNumber, 0)), 'uint8'), typecast(double(timestamp), 'uint8'), ...
          typecast(uint16(h), 'uint8'), typecast(uint16(w), 'uint8'), uint8(1), uint8(CHANNEL - 1), ...
          uint8([0 0])];
pixels = typecast(reshape(int16(img).', 1, []), 'uint8');   % row-major; x86 MATLAB is little-endian

if isempty(client)
    if toc(lastTry) < 1
        return
    end
    lastTry = tic;
    try
        client = tcpclient(RIG_HOST, RIG_PORT, 'Timeout', 1, 'ConnectTimeout', 1);
    catch err
        nFailed = nFailed + 1;
        if nFailed == 1 || mod(nFailed, 100) == 0
            warning('bciRigStream:connect', 'cannot connect to bci-rig at %s:%d (%s); %d tries so far', ...
                    RIG_HOST, RIG_PORT, err.message, nFailed);
        end
        client = [];
        return
    end
end
try
    write(client, [header, pixels]);
catch err
    warning('bciRigStream:send', 'bci-rig connection lost (%s); will reconnect', err.message);
    client = [];
end
end
