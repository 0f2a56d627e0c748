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
%   Wire format (docs/FRAME_STREAM.md, "Framed TCP"): a 36-byte little-endian header (version 2)
%     'BCIF' | uint16 version = 2 | uint16 header length = 36 | uint64 frame number | double time stamp (s)
%     | uint16 height | uint16 width | uint8 pixel type (1 = int16) | uint8 channel (0-based) | uint16 0
%     | uint16 plane (0-based) | uint16 planes per volume
%   then height*width pixels, little-endian, row after row (MATLAB is column-major: img.' is sent).
%
%   Fast-z volumes: ScanImage numbers every frame of the acquisition mode, flyback frames included
%   (stripeData.frameNumberAcqMode, 1-based); its own Scan2D code takes frame n as slice
%   mod(n-1, slices+flyback)+1, a flyback frame when that is beyond the slices. We do the same: the frame
%   number sent is then the VOLUME number (floor((n-1)/(slices+flyback))), the plane the slice (0-based), and
%   flyback frames are not sent. Slices: numel(hSI.hStackManager.zs) (else numSlices); flyback frames:
%   hSI.hFastZ.numDiscardFlybackFrames. Without fast-z: plane 0 of 1, the frame number lastFrameNumber.
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
[nSlices, nFlyback] = fastZLayout(hSI);
plane = 0;
if nSlices > 1
    if isempty(stripe) || ~(isfield(stripe, 'frameNumberAcqMode') || isprop(stripe, 'frameNumberAcqMode'))
        return  % cannot tell the slice: better no frame than one on the wrong plane
    end
    n = double(stripe.frameNumberAcqMode) - 1;      % 0-based, flyback frames counted
    perVolume = nSlices + nFlyback;
    plane = mod(n, perVolume);
    if plane >= nSlices
        return  % a flyback frame: it images no plane
    end
    frameNumber = floor(n / perVolume);             % the volume number, the same for each of its planes
end

[h, w] = size(img);
header = [uint8('BCIF'), typecast(uint16(2), 'uint8'), typecast(uint16(36), 'uint8'), ...
          typecast(uint64(max(frameNumber, 0)), 'uint8'), typecast(double(timestamp), 'uint8'), ...
          typecast(uint16(h), 'uint8'), typecast(uint16(w), 'uint8'), uint8(1), uint8(CHANNEL - 1), ...
          uint8([0 0]), typecast(uint16(plane), 'uint8'), typecast(uint16(max(nSlices, 1)), 'uint8')];
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

function [nSlices, nFlyback] = fastZLayout(hSI)
%FASTZLAYOUT Slices per volume and discarded flyback frames of a fast-z acquisition (1 and 0 without fast-z).
nSlices = 1;
nFlyback = 0;
try
    isFast = hSI.hStackManager.isFastZ;             % ScanImage 2020+
catch
    try
        isFast = logical(hSI.hFastZ.enable);        % older versions
    catch
        isFast = false;
    end
end
if ~isFast
    return
end
try
    nSlices = numel(hSI.hStackManager.zs);
catch
    nSlices = double(hSI.hStackManager.numSlices);
end
try
    nFlyback = double(hSI.hFastZ.numDiscardFlybackFrames);
catch
    nFlyback = 0;
end
end
