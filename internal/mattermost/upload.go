package mattermost

import (
	"context"
	"errors"
	"fmt"
	"io"
	"mime/multipart"
	"net/http"

	"github.com/mmgate/mmgate/internal/fault"
)

// errUploadDone stops the multipart writer once the request has ended.
var errUploadDone = errors.New("upload request ended")

// uploadResponse is Mattermost's FileUploadResponse.
type uploadResponse struct {
	FileInfos []FileInfo `json:"file_infos"`
}

// UploadFiles uploads up to MaxFilesPerPost files to a channel in one
// multipart request (POST /files) and returns their infos in the same order.
// The form carries channel_id before the files, so the server streams them
// instead of buffering the form; the body is produced through an io.Pipe
// while it is sent, each Upload's Open is called once, and its reader is
// closed before UploadFiles returns. An empty list uploads nothing.
func (c *Client) UploadFiles(ctx context.Context, channelID string, files []Upload) ([]FileInfo, error) {
	if len(files) == 0 {
		return nil, nil
	}
	if channelID == "" {
		return nil, fault.New(fault.Invalid, "mattermost_request", "upload without channel")
	}
	if len(files) > MaxFilesPerPost {
		return nil, fault.New(fault.Invalid, "mattermost_too_many_files",
			fmt.Sprintf("at most %d files per upload, got %d", MaxFilesPerPost, len(files)))
	}
	for i, f := range files {
		if f.Name == "" || f.Open == nil {
			return nil, fault.New(fault.Invalid, "mattermost_request",
				fmt.Sprintf("upload %d has no name or no Open", i))
		}
	}

	pr, pw := io.Pipe()
	mw := multipart.NewWriter(pw)
	writeErr := make(chan error, 1)
	go func() {
		err := writeUploadForm(mw, channelID, files)
		writeErr <- err
		pw.CloseWithError(err) // nil: EOF after the closing boundary
	}()

	var out uploadResponse
	err := c.do(ctx, request{
		op: "upload files", method: http.MethodPost, path: "/files",
		body: pr, contentType: mw.FormDataContentType(),
		timeout: c.uploadTimeout, out: &out,
	})
	// Unblock the writer if the server answered before reading everything,
	// and wait for it so every Open'd reader is closed.
	pr.CloseWithError(errUploadDone)
	werr := <-writeErr
	if werr != nil && !errors.Is(werr, errUploadDone) && !errors.Is(werr, io.ErrClosedPipe) {
		// The source failed: that, not the aborted request, is the cause.
		return nil, fmt.Errorf("mattermost: upload files: %w", werr)
	}
	if err != nil {
		return nil, err
	}
	if len(out.FileInfos) != len(files) {
		return nil, faultOf(&DecodeError{Op: "upload files", Status: http.StatusCreated,
			Err: fmt.Errorf("%d file infos for %d files", len(out.FileInfos), len(files))})
	}
	for i, fi := range out.FileInfos {
		if fi.ID == "" {
			return nil, faultOf(&DecodeError{Op: "upload files", Status: http.StatusCreated,
				Err: fmt.Errorf("file info %d without id", i)})
		}
	}
	return out.FileInfos, nil
}

// writeUploadForm writes channel_id, then every file as a "files" part, then
// the closing boundary.
func writeUploadForm(mw *multipart.Writer, channelID string, files []Upload) error {
	if err := mw.WriteField("channel_id", channelID); err != nil {
		return err
	}
	for _, f := range files {
		if err := writeUploadPart(mw, f); err != nil {
			return err
		}
	}
	return mw.Close()
}

func writeUploadPart(mw *multipart.Writer, f Upload) error {
	rc, err := f.Open()
	if err != nil {
		return fmt.Errorf("opening %q: %w", f.Name, err)
	}
	defer rc.Close()
	part, err := mw.CreateFormFile("files", f.Name)
	if err != nil {
		return err
	}
	n, err := io.Copy(part, rc)
	if err != nil {
		return fmt.Errorf("sending %q: %w", f.Name, err)
	}
	if f.Size > 0 && n != f.Size {
		return fmt.Errorf("%q: read %d bytes, expected %d", f.Name, n, f.Size)
	}
	return nil
}
